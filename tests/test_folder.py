"""``load_image_folder``: a user's ``root/<class>/<image>`` images, their cache, and the errors that name files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchmaml.data import folder as folder_module
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.folder import load_image_folder
from torchmaml.data.images import DatasetError
from torchmaml.errors import ConfigError


def write_image(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def root(tmp_path) -> Path:
    """Three classes of 4, 6 and 5 images in all the accepted formats, plus files that are not images."""
    root = tmp_path / "birds"
    for i in range(4):
        write_image(root / "crow" / f"{i}.png", 10 + i)
    for i, suffix in enumerate([".jpg", ".JPEG", ".bmp", ".gif", ".PNG", ".jpeg"]):
        write_image(root / "dove" / f"{i}{suffix}", 100, mode="L" if suffix == ".gif" else "RGB")
    for i in range(5):
        write_image(root / "wren" / f"{i}.png", 200 + i, size=(30, 30))
    (root / "wren" / "notes.txt").write_text("not an image")
    (root / "wren" / ".hidden.png").write_bytes(b"skipped")
    (root / "README.md").write_text("files directly in root are not classes")
    return root


def test_classes_images_and_conversion(root):
    data = load_image_folder(root, mode="RGB", image_size=8)
    assert data.class_names == ("crow", "dove", "wren")
    assert [t.shape for t in data.images] == [(4, 3, 8, 8), (6, 3, 8, 8), (5, 3, 8, 8)]
    assert all(t.dtype == torch.uint8 for t in data.images)
    assert data.images[0][:, 0, 0, 0].tolist() == [10, 11, 12, 13]  # sorted by file name
    assert data.images[2][0, :, 3, 3].tolist() == [200, 55, 7]
    gray = load_image_folder(root, mode="L", image_size=5)
    assert [t.shape for t in gray.images] == [(4, 1, 5, 5), (6, 1, 5, 5), (5, 1, 5, 5)]


def test_the_cache_is_reused_without_decoding(root, monkeypatch):
    first = load_image_folder(root, image_size=8)
    assert len(list((root / folder_module.CACHE_FOLDER).glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded an image although the cache is up to date")

    monkeypatch.setattr(folder_module, "decode_image", no_decoding)
    again = load_image_folder(root, image_size=8)
    assert again.class_names == first.class_names
    assert all(torch.equal(a, b) for a, b in zip(first.images, again.images, strict=True))


def test_a_changed_file_invalidates_the_cache(root, tmp_path):
    cache_dir = tmp_path / "cache"
    load_image_folder(root, image_size=8, cache_dir=cache_dir)
    changed = root / "crow" / "2.png"
    stat = changed.stat()
    write_image(changed, 99)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data = load_image_folder(root, image_size=8, cache_dir=cache_dir)
    assert data.images[0][:, 0, 0, 0].tolist() == [10, 11, 99, 13]
    write_image(root / "crow" / "9.png", 50)
    assert load_image_folder(root, image_size=8, cache_dir=cache_dir).images[0].shape[0] == 5
    assert len(list(cache_dir.glob("*.npz"))) == 1, "the stale cache is removed"
    assert not (root / folder_module.CACHE_FOLDER).exists()


def test_too_few_images_names_the_class_and_counts(root):
    data = load_image_folder(root, image_size=8)
    with pytest.raises(ConfigError, match=r"1 \+ 4 = 5 .*1 of 3 classes have fewer: 'crow' \(4\)"):
        FewShotTasks(data.images, ways=3, shots=1, queries=4, class_names=data.class_names)
    batch = FewShotTasks(data.images, ways=3, shots=1, queries=3, class_names=data.class_names).sample(
        2, torch.Generator().manual_seed(0)
    )
    assert batch.query_x.shape == (2, 9, 3, 8, 8)


def test_an_empty_class_folder_is_a_class_the_sampler_names(root):
    (root / "empty").mkdir()
    data = load_image_folder(root, image_size=8)
    assert data.class_names[2] == "empty" and data.images[2].shape == (0, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"'empty' \(0\)"):
        FewShotTasks(data.images, ways=2, shots=1, queries=1, class_names=data.class_names)


def test_an_unreadable_image_names_the_file(root):
    broken = root / "dove" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DatasetError, match=f"cannot read image {re.escape(str(broken))}"):
        load_image_folder(root, image_size=8)


def test_a_truncated_image_names_the_file(root):
    truncated = root / "crow" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(DatasetError, match=f"cannot read image {re.escape(str(truncated))}"):
        load_image_folder(root, image_size=8)


def test_an_empty_or_missing_root_is_an_error(tmp_path):
    (tmp_path / "empty" / "class_without_images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no images in .*root/<class>/<image>.*found 1 class folders"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")


def test_original_sizes_must_agree(root):
    with pytest.raises(DatasetError, match=r"wren/0\.png is 30x30 but .*crow/0\.png is 12x10; pass image_size="):
        load_image_folder(root, image_size=None)
    for path in (root / "wren").glob("*.png"):
        write_image(path, 1)
    data = load_image_folder(root, image_size=None)
    assert data.images[0].shape == (4, 3, 10, 12)


def test_bad_options_are_config_errors(root):
    with pytest.raises(ConfigError, match="mode"):
        load_image_folder(root, mode="CMYK")
    with pytest.raises(ConfigError, match="image_size"):
        load_image_folder(root, image_size=-3)


def test_resizing_is_antialiased(tmp_path):
    """A one-pixel checkerboard shrinks to mid-gray, not to an aliased pattern of black and white."""
    pixels = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    (tmp_path / "root" / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "root" / "a" / "board.png")
    image = load_image_folder(tmp_path / "root", mode="L", image_size=16).images[0][0, 0]
    assert image[4:12, 4:12].min() >= 100 and image[4:12, 4:12].max() <= 155
