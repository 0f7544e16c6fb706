"""`torchmaml train` on a user's class-per-folder images, then `torchmaml adapt` on new classes."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def write_images(root, classes, per_class, seed):
    """Class c is a bright square at a class-specific position, with pixel noise."""
    rng = np.random.default_rng(seed)
    for c in classes:
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, size=(16, 16, 3), dtype=np.uint8)
            row, col = divmod(c % 16, 4)
            pixels[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = 255
            Image.fromarray(pixels).save(folder / f"{i}.png")


def torchmaml(*args):
    return subprocess.run([sys.executable, "-m", "torchmaml.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    write_images(base / "train", range(12), 6, seed=0)
    run = base / "run"
    result = torchmaml(
        "train", "--config", "sinusoid-demo", "--no-progress", "--out", str(run),
        "--set", "benchmark=folder", "--set", f"data_dir={base / 'train'}", "--set", f"cache_dir={base / 'cache'}",
        "--set", "pretrained_baseline=false", "--set", "color=RGB", "--set", "image_size=16", "--set", "filters=8",
        "--set", "ways=3", "--set", "shots=1", "--set", "queries=2", "--set", "iterations=30",
        "--set", "meta_batch_size=4", "--set", "inner_lr=0.4", "--set", "eval_steps=[1,3]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return base, run


def test_adapt_writes_predictions_for_new_classes(folder_run):
    base, run = folder_run
    write_images(base / "support", (12, 13, 14), 1, seed=1)
    write_images(base / "query", (12, 13, 14), 3, seed=2)
    result = torchmaml("adapt", str(run), "--support", str(base / "support"), "--query", str(base / "query"))
    assert result.returncode == 0, result.stderr
    assert "accuracy on the labelled query examples:" in result.stdout
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == 9
    assert {r["predicted_class"] for r in rows} <= {"class12", "class13", "class14"}
    assert all(0 < float(r["probability"]) <= 1 for r in rows)
    assert {r["true_class"] for r in rows} == {"class12", "class13", "class14"}
    assert not (base / "support" / ".torchmaml-cache").exists(), "the user's folder must not be written to"


def test_adapt_with_the_wrong_number_of_classes(folder_run):
    base, run = folder_run
    write_images(base / "two", (12, 13), 1, seed=3)
    result = torchmaml("adapt", str(run), "--support", str(base / "two"), "--query", str(base / "two"))
    assert result.returncode == 2
    assert "meta-trained for 3-way tasks" in result.stderr and result.stderr.count("\n") == 1


def test_folder_with_too_few_images_names_the_class(tmp_path):
    write_images(tmp_path / "data", range(4), 2, seed=0)
    result = torchmaml(
        "train", "--config", "sinusoid-demo", "--no-progress", "--out", str(tmp_path / "run"),
        "--set", "benchmark=folder", "--set", f"data_dir={tmp_path / 'data'}", "--set", "pretrained_baseline=false",
        "--set", "ways=3", "--set", "shots=1", "--set", "queries=2", "--set", "image_size=16",
    )  # fmt: skip
    assert result.returncode == 2
    assert "3 examples per class are needed" in result.stderr and "'class00' (2)" in result.stderr


def test_more_ways_than_classes(tmp_path):
    write_images(tmp_path / "data", range(3), 4, seed=0)
    result = torchmaml(
        "train", "--config", "sinusoid-demo", "--no-progress", "--out", str(tmp_path / "run"),
        "--set", "benchmark=folder", "--set", f"data_dir={tmp_path / 'data'}", "--set", "pretrained_baseline=false",
        "--set", "ways=5", "--set", "image_size=16",
    )  # fmt: skip
    assert result.returncode == 2 and "ways=5 but the image set has only 3 classes" in result.stderr
