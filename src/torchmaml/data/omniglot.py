"""Omniglot (Lake et al. 2015): 1623 handwritten characters from 50 alphabets, 20 drawings each.

    omniglot = load_omniglot("~/data/omniglot", download=True)      # reads the cache after the first run
    train = omniglot.split_images("vinyals", "train")                 # [4112, 20, 1, 28, 28] uint8
    tasks = FewShotTasks(train, ways=5, shots=1, queries=15)

**Getting the data.** ``load_omniglot`` reads ``images_background`` and ``images_evaluation`` from
``root``, each as the official zip or its unpacked folder (also under ``root/omniglot-py/``, the
torchvision layout). With ``download=True`` a missing zip is fetched from ``base_url`` (by default the
official ``brendenlake/omniglot`` repository) and checked against the official md5. Every copy, local or
downloaded, is checked by its structure: 30 + 20 alphabets, 964 + 659 characters, drawings 01..20 each.
Images are read straight out of the zips (never unpacked).

**The cache.** The first load decodes the 32,460 PNGs (105x105, black strokes on white), resizes them
to ``image_size`` (28 by default) with Pillow's LANCZOS filter on the grayscale image, inverts them so
that **strokes are bright (255) on a dark (0) background**, and writes them with the character names to
``omniglot-<image_size>.npz`` in ``cache_dir`` (default: ``root``), atomically. Later loads read only
that file. ``FewShotTasks`` turns the uint8 pixels into floats in ``[0, 1]`` (strokes 1.0). (The
original MAML script called ``resize(..., LANCZOS)`` on the 1-bit images, which Pillow silently does with
nearest-neighbour sampling; the antialiased images used here keep thin strokes.)

**Splits.** Each 90-degree rotation of a character is a class of its own (Santoro et al. 2016), so a
part of ``n`` characters has ``4n`` classes, in the order (character 0 at 0, 90, 180, 270 degrees
counter-clockwise, character 1, ...); character order is sorted ``Alphabet/characterNN``.

* ``"vinyals"`` (Vinyals et al. 2016; the files ``splits/vinyals/*.txt`` of prototypical networks):
  train 1028, val 172, trainval 1200, test 423 characters. The split is derived here rather than read
  from files: val is five background alphabets, test is twelve evaluation alphabets and Gurmukhi
  characters 42-45, and train is the rest (the tests check this against the original files).
* ``"maml"`` (Finn et al. 2017: a random 1200/423 split of all characters, of which MAML kept 100 for
  validation): trainval 1200 (train 1100 + val 100), test 423 characters. The "random" order is fixed
  and library-independent: characters sorted by ``sha256("0/<Alphabet/characterNN>")`` (seed 0).
"""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchmaml.data.download import DownloadError, UnsafeArchiveError, checked_zip_members, download
from torchmaml.data.images import DatasetError, decode_image, load_cache, save_cache
from torchmaml.errors import ConfigError

logger = logging.getLogger(__name__)

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
EXPECTED = {"images_background": (30, 964), "images_evaluation": (20, 659)}  # alphabets, characters
DRAWINGS = 20
ROTATIONS = (0, 90, 180, 270)
MAX_MEMBER_BYTES = 1 << 20  # an Omniglot drawing is a few KB; a bigger zip entry is not one (or a zip bomb)
SPLITS = ("vinyals", "maml")
PARTS = ("train", "val", "trainval", "test")

VINYALS_VAL_ALPHABETS = frozenset(
    {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
)  # fmt: skip
VINYALS_TEST_ALPHABETS = frozenset(
    {
        "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)", "Oriya",
        "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
    }
)  # fmt: skip
VINYALS_TEST_GURMUKHI_FROM = 42  # Gurmukhi characters 42-45 are test, 01-41 train
MAML_SEED, MAML_TRAIN, MAML_VAL = 0, 1100, 100

_DRAWING = re.compile(r"^([^/]+)/(character\d\d)/\d{4}_(\d\d)\.png$")


@dataclass(frozen=True, eq=False)
class Omniglot:
    """All 1623 characters: ``images [1623, 20, S, S]`` uint8 (strokes 255 on 0), drawer ``d`` at index ``d-1``.

    ``characters[i]`` is ``"Alphabet/characterNN"`` (sorted); ``background[i]`` tells whether it comes
    from ``images_background`` (the 964 characters of Lake et al.'s background set) or the evaluation set.
    """

    images: torch.Tensor
    characters: tuple[str, ...]
    background: torch.Tensor

    def split_characters(self, split: str, part: str) -> list[int]:
        """Indices of the characters in ``part`` (train, val, trainval, test) of ``split`` (vinyals, maml)."""
        if split not in SPLITS:
            raise ConfigError(f"Omniglot split: expected one of {', '.join(SPLITS)}, got {split!r}")
        if part not in PARTS:
            raise ConfigError(f"Omniglot part: expected one of {', '.join(PARTS)}, got {part!r}")
        parts = _vinyals_parts(self.characters) if split == "vinyals" else _maml_parts(self.characters)
        parts["trainval"] = sorted(parts["train"] + parts["val"])
        return parts[part]

    def split_classes(self, split: str, part: str) -> list[str]:
        """The class names of ``split_images(split, part)``, in order: ``"Alphabet/characterNN/rotDDD"``."""
        return [
            f"{self.characters[c]}/rot{degrees:03d}"
            for c in self.split_characters(split, part)
            for degrees in ROTATIONS
        ]

    def split_images(self, split: str, part: str) -> torch.Tensor:
        """``[4 * characters, 20, 1, S, S]`` uint8: every character of the part at each of the four rotations."""
        characters = self.images[self.split_characters(split, part)]  # [n, 20, S, S]
        rotated = torch.stack([torch.rot90(characters, d // 90, dims=(-2, -1)) for d in ROTATIONS], dim=1)
        return rotated.reshape(-1, DRAWINGS, 1, *characters.shape[-2:])


def load_omniglot(
    root: str | Path,
    *,
    download: bool = False,
    image_size: int = 28,
    cache_dir: str | Path | None = None,
    base_url: str = OMNIGLOT_URL,
    md5: Mapping[str, str] = OMNIGLOT_MD5,
    timeout: float = 60.0,
) -> Omniglot:
    """Omniglot from the cache in ``cache_dir`` (default ``root``), building the cache if needed.

    Building it needs ``images_background`` and ``images_evaluation`` (zip or folder) in ``root``;
    with ``download=True`` missing zips are downloaded from ``base_url`` and checked against ``md5``
    (hex digests keyed by ``images_background``/``images_evaluation``; a set missing from the mapping
    is checked by its structure only), each HTTP operation bounded by ``timeout`` seconds. When the data
    cannot be had, ``DatasetError`` (or ``DownloadError``, if a download failed) says which files to put where.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size: must be an integer >= 1, got {image_size!r}")
    root = Path(root).expanduser()
    cache = Path(cache_dir if cache_dir is not None else root).expanduser() / f"omniglot-{image_size}.npz"
    meta = {"dataset": "omniglot", "image_size": image_size, "resample": "lanczos", "strokes": 255}
    arrays = load_cache(cache, meta, required=("images", "characters", "background"))
    if arrays is None:
        sources = _locate(root, download, base_url, md5, timeout)
        logger.info("decoding Omniglot (32,460 images; later loads read the cache) into %s", cache)
        arrays = _decode(sources, image_size)
        save_cache(cache, arrays, meta)
    return Omniglot(
        images=torch.from_numpy(arrays["images"]),
        characters=tuple(arrays["characters"].tolist()),
        background=torch.from_numpy(arrays["background"]),
    )


def _locate(root: Path, allow_download: bool, base_url: str, md5: Mapping[str, str], timeout: float) -> dict[str, Path]:
    """The zip or folder of each image set, downloading the missing ones when allowed."""
    found = {name: _find(root, name) for name in EXPECTED}
    missing = [name for name, path in found.items() if path is None]
    if missing and not allow_download:
        raise DatasetError(
            f"Omniglot is not in {root}: {_instructions(root, base_url)}, or let torchmaml fetch it: "
            f"--set download=true (download = true in a config file; download=True in Python)"
        )
    for name in missing:
        url = _url(base_url, name)
        try:
            path = download(url, root / f"{name}.zip", md5=md5.get(name), timeout=timeout)
        except DownloadError as error:
            raise DownloadError(f"{error}. Without a download: {_instructions(root, base_url)}") from None
        try:
            with zipfile.ZipFile(path) as archive:
                checked_zip_members(archive)
        except (UnsafeArchiveError, zipfile.BadZipFile) as error:
            path.unlink(missing_ok=True)
            raise DownloadError(f"downloaded {url} is not a usable zip ({error}); it was deleted") from None
        found[name] = path
    return {name: path for name, path in found.items() if path is not None}


def _find(root: Path, name: str) -> Path | None:
    """``name.zip`` or the folder ``name`` in ``root`` or ``root/omniglot-py``, zips first."""
    for folder in (root, root / "omniglot-py"):
        for candidate in (folder / f"{name}.zip", folder / name):
            if candidate.exists():
                return candidate
    return None


def _url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}.zip"


def _instructions(root: Path, base_url: str) -> str:
    urls = " and ".join(_url(base_url, name) for name in EXPECTED)
    return (
        f"put images_background.zip and images_evaluation.zip (from {urls}) into {root}, "
        "or their unpacked folders images_background/ and images_evaluation/"
    )


def _decode(sources: Mapping[str, Path], image_size: int) -> dict[str, np.ndarray]:
    """Check the structure of both image sets, then decode all drawings into the cache's arrays."""
    drawings: dict[str, list] = {}  # "Alphabet/characterNN" -> its 20 (name, read) entries in drawer order
    background: set[str] = set()
    with _opened(sources) as members:
        for name, entries in members.items():
            found = _structure(name, sources[name], entries)
            drawings.update(found)
            if name == "images_background":
                background.update(found)
        characters = sorted(drawings)
        images = np.empty((len(characters), DRAWINGS, image_size, image_size), dtype=np.uint8)
        for c, character in enumerate(characters):
            for d, (label, read) in enumerate(drawings[character]):
                images[c, d] = 255 - decode_image(read(), label, "L", image_size)
    return {
        "images": images,
        "characters": np.array(characters),
        "background": np.array([character in background for character in characters]),
    }


def _structure(name: str, source: Path, entries: Mapping[str, tuple]) -> dict[str, list]:
    """Group one image set's drawings by character, refusing anything but the Omniglot layout."""
    drawings: dict[str, dict[int, tuple]] = {}
    for relative, entry in entries.items():
        match = _DRAWING.match(relative)
        if match is None:
            raise DatasetError(f"{source}: unexpected file {relative!r}; expected <Alphabet>/characterNN/XXXX_YY.png")
        alphabet, character, drawer = match.groups()
        drawings.setdefault(f"{alphabet}/{character}", {})[int(drawer)] = entry
    alphabets = {character.split("/")[0] for character in drawings}
    expected_alphabets, expected_characters = EXPECTED[name]
    problems = []
    if (len(alphabets), len(drawings)) != (expected_alphabets, expected_characters):
        problems.append(
            f"{len(alphabets)} alphabets and {len(drawings)} characters, expected "
            f"{expected_alphabets} and {expected_characters}"
        )
    incomplete = [c for c, found in sorted(drawings.items()) if sorted(found) != list(range(1, DRAWINGS + 1))]
    if incomplete:
        problems.append(f"{len(incomplete)} characters without exactly the drawings _01.._20, e.g. {incomplete[0]}")
    if problems:
        raise DatasetError(
            f"{source} is not a complete Omniglot {name}: {'; '.join(problems)}. Replace it with the official "
            f"{name}.zip ({_url(OMNIGLOT_URL, name)})"
        )
    return {character: [found[d] for d in sorted(found)] for character, found in drawings.items()}


@contextmanager
def _opened(sources: Mapping[str, Path]) -> Iterator[dict[str, dict[str, tuple]]]:
    """For each image set, ``{relative path: (name for errors, read())}`` of its PNG drawings."""
    archives: list[zipfile.ZipFile] = []
    try:
        members = {}
        for name, source in sources.items():
            if source.is_dir():
                members[name] = _folder_entries(source)
            else:
                archive = _open_zip(source)
                archives.append(archive)
                members[name] = _zip_entries(archive, name, source)
        yield members
    finally:
        for archive in archives:
            archive.close()


def _folder_entries(folder: Path) -> dict[str, tuple]:
    entries = {}
    for path in sorted(folder.rglob("*.png")):
        relative = path.relative_to(folder).as_posix()
        if not any(part.startswith(".") for part in Path(relative).parts):
            entries[relative] = (str(path), path.read_bytes)
    return entries


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path} is not a readable zip ({error}); replace it with a complete copy") from None


def _zip_entries(archive: zipfile.ZipFile, name: str, path: Path) -> dict[str, tuple]:
    def reader(info: zipfile.ZipInfo):
        def read() -> bytes:
            try:
                with archive.open(info) as stream:  # reads in bounded pieces: memory stays near the cap
                    data = stream.read(MAX_MEMBER_BYTES + 1)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:  # CRC, truncated, bad deflate
                raise DatasetError(f"{path}: cannot read {info.filename} ({error}); the zip is corrupt") from None
            if len(data) > MAX_MEMBER_BYTES:
                raise DatasetError(f"{path}: {info.filename} inflates past {MAX_MEMBER_BYTES} bytes; corrupt zip")
            return data

        return read

    entries = {}
    for info in checked_zip_members(archive, max_member_bytes=MAX_MEMBER_BYTES):
        parts = info.filename.split("/")
        if info.is_dir() or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
            continue
        if parts[0] != name:
            raise DatasetError(f"{path}: unexpected entry {info.filename!r}; every entry should be under {name}/")
        entries["/".join(parts[1:])] = (f"{path}:{info.filename}", reader(info))
    return entries


def _vinyals_parts(characters: tuple[str, ...]) -> dict[str, list[int]]:
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for index, character in enumerate(characters):
        alphabet, number = character.split("/")[0], int(character[-2:])
        if alphabet in VINYALS_VAL_ALPHABETS:
            parts["val"].append(index)
        elif alphabet in VINYALS_TEST_ALPHABETS or (alphabet == "Gurmukhi" and number >= VINYALS_TEST_GURMUKHI_FROM):
            parts["test"].append(index)
        else:
            parts["train"].append(index)
    return parts


def _maml_parts(characters: tuple[str, ...]) -> dict[str, list[int]]:
    order = sorted(
        range(len(characters)), key=lambda i: hashlib.sha256(f"{MAML_SEED}/{characters[i]}".encode()).digest()
    )
    return {
        "train": sorted(order[:MAML_TRAIN]),
        "val": sorted(order[MAML_TRAIN : MAML_TRAIN + MAML_VAL]),
        "test": sorted(order[MAML_TRAIN + MAML_VAL :]),
    }
