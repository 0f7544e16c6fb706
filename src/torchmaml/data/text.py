"""Short texts as fixed-length token tensors, and a user's own labelled texts.

Tokenisation is byte-level (as ByT5): a text is its UTF-8 bytes, token ``b + 1`` for byte ``b`` and ``0`` for
padding, so the vocabulary is ``VOCABULARY = 257`` symbols for every language and script, with no unknown
symbol and nothing to fit on training data. A text longer than ``length`` bytes is cut after its last whole
character that fits (never inside a character), and a shorter one is padded with zeros on the right:

    ids = encode(["hello", "año"], length=8)   # [[105, 102, 109, 109, 112, 0, 0, 0], [98, 196, 178, 112, 0, ...]]
    decode(ids) == ["hello", "año"]

A user's texts are ``root/<class>/<file>.txt`` (every non-empty line of every ``.txt`` file of a class folder is
one example, files and lines in sorted order) or one ``.csv`` file of ``class,text`` rows (a header row
``class,text`` is skipped). The encoded texts are cached in ``cache_dir`` like decoded images
(``torchmaml.data.folder``): the cache is named by a hash of the options and of every file's path, size and
modification time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchmaml.data.images import DatasetError, load_cache, save_cache
from torchmaml.errors import ConfigError

PAD = 0
VOCABULARY = 257  # the 256 byte values, shifted by one, and the padding id 0
TEXT_SUFFIX = ".txt"
CACHE_FOLDER = ".torchmaml-cache"


def encode(texts: Sequence[str], length: int) -> torch.Tensor:
    """``[len(texts), length]`` int64 token ids: byte ``b`` is ``b + 1``, padding is ``0`` (see the module
    docstring for truncation)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"max_length: must be an integer >= 1, got {length!r}")
    ids = np.zeros((len(texts), length), dtype=np.int64)
    for row, text in enumerate(texts):
        data = text.encode("utf-8")
        if len(data) > length:  # back up to a character boundary: continuation bytes are 0b10xxxxxx
            cut = length
            while cut > 0 and data[cut] & 0xC0 == 0x80:
                cut -= 1
            data = data[:cut]
        ids[row, : len(data)] = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + 1
    return torch.from_numpy(ids)


def decode(ids: torch.Tensor) -> list[str]:
    """The texts of ``[n, length]`` token ids (padding dropped): the inverse of ``encode`` for texts that fit."""
    return [bytes(int(t) - 1 for t in row if t != PAD).decode("utf-8", errors="replace") for row in ids.tolist()]


@dataclass(frozen=True, eq=False)
class TextClasses:
    """Texts by class: ``ids[c]`` is ``[examples_c, length]`` int64 token ids of the class ``class_names[c]``."""

    class_names: tuple[str, ...]
    ids: tuple[torch.Tensor, ...]

    def arrays(self) -> dict[str, np.ndarray]:
        """As the arrays of a cache file: every class's ids concatenated, the counts, the names."""
        return {
            "ids": torch.cat(self.ids).numpy(),
            "counts": np.array([len(t) for t in self.ids], dtype=np.int64),
            "class_names": np.array(self.class_names),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TextClasses:
        """The inverse of :meth:`arrays`."""
        ids = torch.from_numpy(arrays["ids"]).split(arrays["counts"].tolist())
        return cls(tuple(arrays["class_names"].tolist()), tuple(ids))


def classes_from_texts(texts: dict[str, list[str]], length: int) -> TextClasses:
    """Encode ``{class name: texts}`` (classes in sorted order)."""
    names = sorted(texts)
    return TextClasses(tuple(names), tuple(encode(texts[name], length) for name in names))


def load_text_folder(root: str | Path, *, length: int, cache_dir: str | Path | None = None) -> TextClasses:
    """The texts of ``root/<class>/<file>.txt`` or of the CSV file ``root`` (see the module docstring),
    encoded to ``length`` tokens, from the cache when it is up to date.

    Raises ``DatasetError`` naming the problem if ``root`` holds no texts or a file cannot be read.
    """
    root = Path(root).expanduser()
    files = _text_files(root)
    listing = [[str(f.relative_to(root)) if f != root else f.name, *_stamp(f)] for f in files]
    meta = {"dataset": "text_folder", "length": length, "tokens": "utf-8 bytes + 1"}
    key = hashlib.sha256(json.dumps([meta, listing]).encode()).hexdigest()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache(root)
    place = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    cache = folder / f"text-{place}-{length}-{key[:16]}.npz"
    arrays = load_cache(cache, {**meta, "key": key})
    if arrays is None:
        arrays = classes_from_texts(read_texts(root), length).arrays()
        if save_cache(cache, arrays, {**meta, "key": key}):
            for stale in folder.glob(f"text-{place}-{length}-*.npz"):
                if stale != cache:
                    stale.unlink(missing_ok=True)
    return TextClasses.from_arrays(arrays)


def read_texts(root: Path) -> dict[str, list[str]]:
    """``{class: texts}`` of a text folder or CSV file, unencoded."""
    if root.is_file():
        return _read_csv(root)
    texts: dict[str, list[str]] = {}
    for file in _text_files(root):
        texts.setdefault(file.parent.name, []).extend(read_lines(file))
    for entry in os.scandir(root):  # a class folder without texts is kept: FewShotTasks names it
        if entry.is_dir() and not entry.name.startswith("."):
            texts.setdefault(entry.name, [])
    return texts


def read_lines(file: Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped."""
    return [line for _, line in numbered_lines(file)]


def numbered_lines(file: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` for the non-empty lines of a UTF-8 text file, stripped; numbers start at 1."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the text file {file}: {error}; texts must be UTF-8") from None
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def _stamp(file: Path) -> tuple[int, int]:
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns


def _default_cache(root: Path) -> Path:
    return root.parent / CACHE_FOLDER if root.is_file() else root / CACHE_FOLDER


def _text_files(root: Path) -> list[Path]:
    """The ``.txt`` files of the class folders of ``root`` (or ``[root]`` for a CSV file), sorted."""
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root} is a file but not a .csv file; give a folder root/<class>/<file>.txt or a CSV")
        return [root]
    if not root.is_dir():
        raise DatasetError(f"text folder {root} does not exist (expected root/<class>/<file>.txt or a .csv file)")
    try:
        files = sorted(
            Path(entry.path) / name
            for entry in os.scandir(root)
            if entry.is_dir() and not entry.name.startswith(".")
            for name in os.listdir(entry.path)
            if name.lower().endswith(TEXT_SUFFIX) and not name.startswith(".")
        )
    except OSError as error:
        raise DatasetError(f"cannot read the text folder {root}: {error}") from None
    if not files:
        raise DatasetError(
            f"no texts in {root}: expected one folder per class, root/<class>/<file>.txt, one text a line"
        )
    return files


def _read_csv(path: Path) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if number == 1 and [cell.strip().lower() for cell in row] == ["class", "text"]:
                    continue
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) != 2:
                    raise DatasetError(f"{path}, line {number}: expected two columns, class,text; got {len(row)}")
                if row[1].strip():
                    texts.setdefault(row[0].strip(), []).append(row[1].strip())
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read the CSV file {path}: {error}; it must be UTF-8 class,text rows") from None
    if not texts:
        raise DatasetError(f"no texts in {path}: expected class,text rows")
    return texts
