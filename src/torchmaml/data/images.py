"""Image decoding and the one-file array cache shared by the Omniglot and image-folder datasets.

Decoding thousands of small images is slow, so each dataset is decoded and resized once and kept as a
single ``.npz`` file of uint8 arrays; later runs read only that file, which is much faster than decoding.
The cache is written atomically (temporary file, then rename), so a crash never leaves a half-written
cache, and it carries a JSON ``meta`` record: a cache whose record differs from what the caller expects
(another image size, another file list, an older format) is treated as missing and rebuilt.

Images are resized with Pillow's LANCZOS filter (antialiased, so thin strokes survive downscaling), to a
square ``size x size`` (the aspect ratio is not kept, as in the usual miniImageNet preprocessing).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from torchmaml.checkpoint import atomic_write_bytes
from torchmaml.errors import TorchMAMLError
from torchmaml.run.files import UnsafePathError, WriteError

logger = logging.getLogger(__name__)

ColorMode = Literal["L", "RGB"]
RESAMPLE = Image.Resampling.LANCZOS
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 32-bit integers, as 16-bit PNGs often open
CACHE_FORMAT = 1  # bump when the layout of cached arrays changes: older caches are then rebuilt


class DatasetError(TorchMAMLError):
    """Data on disk is missing, malformed, or unreadable; the message names the file or folder."""


def decode_image(data: bytes | Path, name: str, mode: ColorMode, size: int | None) -> np.ndarray:
    """The image as uint8 pixels, ``[H, W]`` for ``mode="L"`` or ``[H, W, 3]`` for ``"RGB"``.

    ``data`` is the encoded file (its bytes, or its path); ``name`` is what an error message calls it.
    With ``size`` the image is resized to ``size x size``; animated images give their first frame.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            converted = (_eight_bit(image) if image.mode in SIXTEEN_BIT_MODES else image).convert(mode)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {name}: {error}") from None
    if size is not None and converted.size != (size, size):
        converted = converted.resize((size, size), RESAMPLE)
    return np.asarray(converted, dtype=np.uint8)


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (65535 -> 255; Pillow's ``convert("L")`` would clip at 255)."""
    pixels = np.asarray(image, dtype=np.int64).clip(0, 65535)
    return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def save_cache(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bool:
    """Write ``arrays`` and ``meta`` to ``path`` atomically; ``False`` (with a warning) if it cannot be written.

    A cache that cannot be written (read-only data folder, full disk) is not an error: the caller has
    the data in memory already, only the next run will be slower.
    """
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps({"format": CACHE_FORMAT, **meta})), **arrays)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except (WriteError, UnsafePathError) as error:
        warnings.warn(
            f"could not write the dataset cache ({error}); the data is used "
            "anyway but will be decoded again next time: pass cache_dir= a writable folder to keep it",
            stacklevel=3,
        )
        return False
    logger.info("wrote dataset cache %s", path)
    return True


def load_cache(path: Path, meta: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
    """The arrays cached at ``path``, or ``None`` if there is no readable cache made with ``meta`` that holds
    every array named in ``required``."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if json.loads(str(stored["meta"])) != {"format": CACHE_FORMAT, **meta}:
                logger.info("dataset cache %s was made with other options; rebuilding it", path)
                return None
            arrays = {key: stored[key] for key in stored.files if key != "meta"}
            missing = [key for key in required if key not in arrays]
            if missing:
                logger.warning("dataset cache %s lacks %s; rebuilding it", path, ", ".join(missing))
                return None
            return arrays
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logger.warning("dataset cache %s is unreadable (%s); rebuilding it", path, error)
        return None
