"""Omniglot from a local copy: the real data's cache, its reuse, the splits, and the layouts and errors
of local copies (on a tiny synthetic Omniglot from ``test_download``).

The real data is decoded once per test session into a temporary cache (several seconds); set
``TORCHMAML_OMNIGLOT`` to use another copy than ``shared/data/omniglot`` beside the repository.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pytest
import torch
from conftest import OMNIGLOT_COPY
from PIL import Image
from test_download import fake_omniglot, omniglot_files, write_zip

from torchmaml.data import omniglot
from torchmaml.data.download import UnsafeArchiveError
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.images import DatasetError
from torchmaml.data.omniglot import load_omniglot
from torchmaml.errors import ConfigError

REAL = OMNIGLOT_COPY
SPLIT_SIZES = {  # characters per part; classes are 4x (rotations)
    "vinyals": {"train": 1028, "val": 172, "trainval": 1200, "test": 423},
    "maml": {"train": 1100, "val": 100, "trainval": 1200, "test": 423},
}


@pytest.fixture
def real(omniglot_cache):
    """The real Omniglot, decoded into a fresh cache folder: ``(data, cache folder, build seconds)``."""
    return omniglot_cache


def test_the_real_cache_holds_1623_characters_of_20_drawings(real):
    data, cache_dir, _ = real
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == torch.uint8
    assert len(set(data.characters)) == 1623 and list(data.characters) == sorted(data.characters)
    assert len({c.split("/")[0] for c in data.characters}) == 50
    assert int(data.background.sum()) == 964
    assert data.images.min() == 0 and data.images.max() == 255
    ink = data.images.float().mean() / 255
    assert 0.03 < ink < 0.2, "strokes are bright on a dark background"
    assert data.images[..., 0, :].float().mean() < 0.01 * 255, "the border is background"
    assert [p.name for p in cache_dir.iterdir()] == ["omniglot-28.npz"]


def test_a_second_load_reads_the_cache_without_decoding(real, monkeypatch):
    data, cache_dir, build_seconds = real

    def no_decoding(*args):
        raise AssertionError("decoded an image although the cache exists")

    monkeypatch.setattr(omniglot, "decode_image", no_decoding)
    start = time.perf_counter()
    again = load_omniglot(REAL, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    assert torch.equal(again.images, data.images) and again.characters == data.characters
    assert seconds < 2.0 and seconds < build_seconds / 5, (seconds, build_seconds)


@pytest.mark.parametrize("split", ["vinyals", "maml"])
def test_split_sizes_and_disjoint_parts(real, split):
    data = real[0]
    parts = {part: data.split_characters(split, part) for part in SPLIT_SIZES[split]}
    assert {part: len(chars) for part, chars in parts.items()} == SPLIT_SIZES[split]
    assert sorted(parts["train"] + parts["val"]) == parts["trainval"]
    assert sorted(parts["trainval"] + parts["test"]) == list(range(1623))
    images = data.split_images(split, "test")
    assert images.shape == (4 * 423, 20, 1, 28, 28) and images.dtype == torch.uint8
    assert len(data.split_classes(split, "test")) == 4 * 423


def test_the_derived_vinyals_split_equals_the_published_files(real):
    folder = REAL / "splits" / "vinyals"
    if not folder.is_dir():
        pytest.skip(f"no Vinyals split files in {folder}")
    for part in ("train", "val", "trainval", "test"):
        published = {line.strip() for line in (folder / f"{part}.txt").read_text().splitlines() if line.strip()}
        assert set(real[0].split_classes("vinyals", part)) == published, part


def test_the_maml_split_is_pinned(real):
    """The seeded order must never change, or published numbers would silently use another split."""
    data = real[0]
    test_names = "\n".join(data.characters[i] for i in data.split_characters("maml", "test"))
    assert hashlib.sha256(test_names.encode()).hexdigest()[:16] == "7f2b07731dcab08e"


def test_rotations_are_counter_clockwise_like_pil(real):
    data = real[0]
    index = data.split_characters("vinyals", "val")[3]
    classes = data.split_images("vinyals", "val")[12:16, 5, 0]  # character 3's four rotations, drawer 06
    upright = Image.fromarray(data.images[index, 5].numpy())
    for k, degrees in enumerate(omniglot.ROTATIONS):
        assert np.array_equal(classes[k].numpy(), np.asarray(upright.rotate(degrees)))
    assert data.split_classes("vinyals", "val")[13] == f"{data.characters[index]}/rot090"


def test_a_split_feeds_the_sampler(real):
    train = real[0].split_images("maml", "train")
    batch = FewShotTasks(train, ways=20, shots=1, queries=5).sample(2, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (2, 20, 1, 28, 28) and 0.0 <= batch.support_x.min() <= batch.support_x.max() <= 1


def test_unknown_split_or_part_is_a_config_error(real):
    with pytest.raises(ConfigError, match="split: expected one of vinyals, maml"):
        real[0].split_characters("lake", "train")
    with pytest.raises(ConfigError, match="part: expected one of train, val, trainval, test"):
        real[0].split_images("maml", "validation")


# -- local copies of a tiny synthetic Omniglot --------------------------------------------------------


def test_pixels_are_inverted_so_strokes_are_bright(tmp_path, monkeypatch):
    fake_omniglot(tmp_path, monkeypatch)
    images = load_omniglot(tmp_path, image_size=105).images  # no resizing: exact pixels
    expected = np.zeros((105, 105), dtype=np.uint8)
    expected[5 * 7 : 5 * 7 + 20, 5 * 4 : 5 * 4 + 20] = 255  # character 4 (Gamma/character01), drawer 07
    assert np.array_equal(images[3, 6].numpy(), expected)


@pytest.mark.parametrize("subfolder", ["", "omniglot-py"])
def test_unpacked_folders_give_the_same_data_as_the_zips(tmp_path, monkeypatch, subfolder):
    fake_omniglot(tmp_path / "zips", monkeypatch)
    fake_omniglot(tmp_path / "folders" / subfolder, monkeypatch, as_zips=False)
    from_zips = load_omniglot(tmp_path / "zips", image_size=8)
    from_folders = load_omniglot(tmp_path / "folders", image_size=8)
    assert torch.equal(from_zips.images, from_folders.images) and from_zips.characters == from_folders.characters
    assert (tmp_path / "folders" / "omniglot-8.npz").exists()


def test_an_incomplete_copy_names_what_is_missing(tmp_path, monkeypatch):
    fake_omniglot(tmp_path, monkeypatch, as_zips=False)
    (tmp_path / "images_evaluation/Gamma/character02/0005_13.png").unlink()
    with pytest.raises(DatasetError, match=r"1 characters without exactly the drawings _01.._20, e.g. Gamma/charac"):
        load_omniglot(tmp_path)
    monkeypatch.setattr(omniglot, "EXPECTED", {"images_background": (2, 3), "images_evaluation": (20, 659)})
    with pytest.raises(DatasetError, match="1 alphabets and 2 characters, expected 20 and 659"):
        load_omniglot(tmp_path)


def test_a_corrupt_local_zip_is_reported_and_kept(tmp_path, monkeypatch):
    fake_omniglot(tmp_path, monkeypatch)
    path = tmp_path / "images_evaluation.zip"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"images_evaluation\.zip is not a readable zip"):
        load_omniglot(tmp_path)
    assert path.exists() and not (tmp_path / "omniglot-28.npz").exists()


def test_a_local_zip_with_an_escaping_entry_is_refused(tmp_path, monkeypatch):
    fake_omniglot(tmp_path, monkeypatch)
    files = omniglot_files({"images_evaluation": {"Gamma": 2}})
    write_zip(tmp_path / "images_evaluation.zip", {**files, "../evil.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        load_omniglot(tmp_path)
    assert not list(tmp_path.parent.rglob("evil.txt"))


def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    fake_omniglot(tmp_path, monkeypatch)
    first = load_omniglot(tmp_path, image_size=8)
    (tmp_path / "omniglot-8.npz").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        again = load_omniglot(tmp_path, image_size=8)
    assert torch.equal(first.images, again.images) and "unreadable" in caplog.text
    load_omniglot(tmp_path, image_size=10)
    assert {p.name for p in tmp_path.glob("*.npz")} == {"omniglot-8.npz", "omniglot-10.npz"}


def test_an_unwritable_cache_folder_warns_and_still_loads(tmp_path, monkeypatch):
    fake_omniglot(tmp_path, monkeypatch)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(UserWarning, match="could not write the dataset cache"):
        data = load_omniglot(tmp_path, cache_dir=tmp_path / "a-file" / "cache", image_size=8)
    assert data.images.shape == (5, 20, 8, 8)


def test_image_size_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ConfigError, match="image_size"):
        load_omniglot(tmp_path, image_size=0)
