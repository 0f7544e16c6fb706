"""A user's own labelled images: ``root/<class>/<image>``, one folder per class.

    data = load_image_folder("~/data/birds", mode="RGB", image_size=84)
    tasks = FewShotTasks(data.images, ways=5, shots=5, queries=15, class_names=data.class_names)

Every sub-folder of ``root`` is a class (named after the folder, sorted); its images are the files with
a ``.png``, ``.jpg``, ``.jpeg``, ``.bmp`` or ``.gif`` suffix (any case; the first frame of an animation),
sorted by name. Names starting with ``.`` are skipped, sub-sub-folders are not searched. Images are
converted to grayscale (``mode="L"``, one channel) or ``"RGB"`` and resized to ``image_size x
image_size`` (LANCZOS, aspect ratio not kept; ``None`` keeps their size, which must then be the same
for all). A class folder without images is kept, so ``FewShotTasks`` can name it in its error.

The decoded images are cached in one ``.npz`` file in ``cache_dir`` (default ``root/.torchmaml-cache``).
The cache file is named by a hash of the options and of every image's path, size and modification time:
adding, removing or changing an image makes a new cache (and the stale one of the same folder and options
is deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchmaml.data.images import ColorMode, DatasetError, decode_image, load_cache, save_cache
from torchmaml.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
CACHE_FOLDER = ".torchmaml-cache"


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """Images by class: ``images[c]`` is ``[examples_c, C, H, W]`` uint8 for the class ``class_names[c]``."""

    class_names: tuple[str, ...]
    images: tuple[torch.Tensor, ...]


def load_image_folder(
    root: str | Path,
    *,
    mode: ColorMode = "RGB",
    image_size: int | None = 84,
    cache_dir: str | Path | None = None,
) -> ImageFolder:
    """The images of ``root/<class>/<image>``, from the cache when it is up to date (see the module docstring).

    Raises ``DatasetError`` if ``root`` holds no images or an image cannot be read (naming the file).
    """
    if mode not in ("L", "RGB"):
        raise ConfigError(f"mode: expected 'L' (grayscale) or 'RGB', got {mode!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size: must be an integer >= 1 or None, got {image_size!r}")
    root = Path(root).expanduser()
    classes = _scan(root)
    listing = [[name, [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]] for name, files in classes]
    meta = {"dataset": "folder", "mode": mode, "image_size": image_size, "resample": "lanczos"}
    key = hashlib.sha256(json.dumps([meta, listing]).encode()).hexdigest()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else root / CACHE_FOLDER
    place = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]  # one cache dir may serve many roots
    prefix = f"{_slug(root.resolve().name)}-{place}-{mode}-{image_size}"
    cache = folder / f"{prefix}-{key[:16]}.npz"
    arrays = load_cache(cache, {**meta, "key": key})
    if arrays is None:
        arrays = _decode(root, classes, mode, image_size)
        if save_cache(cache, arrays, {**meta, "key": key}):
            for stale in folder.glob(f"{prefix}-*.npz"):
                if stale != cache:
                    stale.unlink(missing_ok=True)
    counts = arrays["counts"].tolist()
    return ImageFolder(
        class_names=tuple(arrays["class_names"].tolist()),
        images=tuple(torch.from_numpy(arrays["images"]).split(counts)),
    )


def _scan(root: Path) -> list[tuple[str, list[os.DirEntry]]]:
    """``(class name, image files)`` for every class folder of ``root``, sorted by name."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a folder (expected root/<class>/<image>)")
    classes = []
    try:
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            files = [
                f
                for f in os.scandir(entry.path)
                if not f.name.startswith(".") and Path(f.name).suffix.lower() in IMAGE_SUFFIXES and f.is_file()
            ]
            classes.append((entry.name, sorted(files, key=lambda f: f.name)))
    except OSError as error:  # a symbolic link loop, an unreadable folder
        raise DatasetError(f"cannot read the image folder {root}: {error}") from None
    if not any(files for _, files in classes):
        raise DatasetError(
            f"no images in {root}: expected one folder per class, root/<class>/<image>, with images ending in "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}; found {len(classes)} class folders"
        )
    return classes


def _decode(
    root: Path, classes: list[tuple[str, list[os.DirEntry]]], mode: ColorMode, image_size: int | None
) -> dict[str, np.ndarray]:
    """Every image as ``[C, H, W]`` uint8, stacked in class order, with the per-class counts and names."""
    total = sum(len(files) for _, files in classes)
    logger.info("decoding %d images from %s", total, root)
    decoded, first = [], None
    for _, files in classes:
        for file in files:
            pixels = decode_image(Path(file.path), file.path, mode, image_size)
            pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            if first is None:
                first = (file.path, pixels.shape)
            elif pixels.shape != first[1]:
                raise DatasetError(
                    f"image {file.path} is {pixels.shape[2]}x{pixels.shape[1]} but {first[0]} is "
                    f"{first[1][2]}x{first[1][1]}; pass image_size= to resize them all"
                )
            decoded.append(pixels)
    return {
        "images": np.stack(decoded),
        "counts": np.array([len(files) for _, files in classes], dtype=np.int64),
        "class_names": np.array([name for name, _ in classes]),
    }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "root"


PARTS = ("train", "val", "test")


def split_classes(
    class_names: list[str], fractions: list[float], seed: int, ways: int, validate: bool
) -> dict[str, list[int]]:
    """Disjoint class indices for ``train``, ``val`` and ``test``: a seeded shuffle of the classes cut by
    ``fractions`` (train, val, test shares). The test part, and the validation part when ``validate``, get at
    least ``ways`` classes; the rest is training. Tasks of one part never see the classes of another."""
    count = len(class_names)
    total = sum(fractions)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    test = max(ways, round(count * fractions[2] / total))
    val = max(ways if validate else 0, round(count * fractions[1] / total))
    train = count - test - val
    if train < ways:
        raise ConfigError(
            f"class_fractions {fractions}: the {count} classes of the folder split into {train} train, {val} "
            f"validation and {test} test classes, and each part needs at least ways={ways}; add class folders, "
            f"lower ways or change class_fractions"
        )
    return {
        "train": sorted(order[:train]),
        "val": sorted(order[train : train + val]),
        "test": sorted(order[train + val :]),
    }
