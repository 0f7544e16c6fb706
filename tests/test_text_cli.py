"""`torchmaml train` on a user's texts (``text_folder``), then `torchmaml evaluate` and `torchmaml adapt` on texts of
new classes."""

from __future__ import annotations

import csv
import random
import subprocess
import sys

import pytest


def write_texts(root, classes, per_class, seed):
    """Class c's texts are 3 to 8 letters from its own 3-letter alphabet, one a line, in two files."""
    rng = random.Random(seed)
    for c in classes:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"[3 * c : 3 * c + 3]
        lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8))) for _ in range(per_class)]
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        (folder / "one.txt").write_text("\n".join(lines[: per_class // 2]) + "\n")
        (folder / "two.txt").write_text("\n".join(lines[per_class // 2 :]) + "\n")


def torchmaml(*args):
    return subprocess.run([sys.executable, "-m", "torchmaml.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("texts")
    write_texts(base / "train", range(9), 12, seed=0)
    run = base / "run"
    result = torchmaml(
        "train", "--config", "text-5w5s-gru", "--no-progress", "--out", str(run),
        "--set", "benchmark=text_folder", "--set", f"data_dir={base / 'train'}", "--set", f"cache_dir={base / 'cache'}",
        "--set", "ways=3", "--set", "shots=2", "--set", "queries=2", "--set", "iterations=20",
        "--set", "text_embedding=8", "--set", "text_hidden=8", "--set", "max_length=8", "--set", "meta_batch_size=4",
        "--set", "validate_every=0", "--set", "eval_tasks=10", "--set", "eval_steps=[1,3]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return base, run


def test_evaluate_a_text_run(text_run):
    _, run = text_run
    result = torchmaml("evaluate", str(run))
    assert result.returncode == 0, result.stderr
    assert "accuracy %" in result.stdout and "test classes" in result.stdout


def test_adapt_predicts_every_line_of_new_classes(text_run):
    base, run = text_run
    write_texts(base / "support", (9, 10, 11), 2, seed=1)
    write_texts(base / "query", (9, 10, 11), 4, seed=2)
    result = torchmaml("adapt", str(run), "--support", str(base / "support"), "--query", str(base / "query"))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == 12
    assert {r["predicted_class"] for r in rows} <= {"class09", "class10", "class11"}
    assert {r["true_class"] for r in rows} == {"class09", "class10", "class11"}
    assert all(r["file"].rsplit(":", 1)[0].endswith(".txt") and r["file"].rsplit(":", 1)[1].isdigit() for r in rows)
    assert "accuracy on the labelled query" in result.stdout
    assert not (base / "support" / ".torchmaml-cache").exists(), "the user's folder must not be written to"


def test_adapt_with_the_wrong_number_of_classes_is_one_line(text_run):
    base, run = text_run
    write_texts(base / "two", (9, 10), 2, seed=3)
    result = torchmaml("adapt", str(run), "--support", str(base / "two"), "--query", str(base / "two"))
    assert result.returncode == 2
    assert "3-way" in result.stderr and len(result.stderr.strip().splitlines()) == 1
