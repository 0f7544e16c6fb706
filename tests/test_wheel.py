"""The wheel holds the library only: ``torchmaml`` and its package data, no research code. The theory lab
(``experiments/theory_lab``) sits beside the package in the repository and must not be packaged, nor imported
by anything that is (a few seconds: ``pip wheel`` from a copy of the sources, no network)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORTS_EXPERIMENTS = re.compile(r"^\s*(from|import)\s+experiments\b", re.M)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a copy of what the repository ships: packaging files, src/ and experiments/."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("src", "experiments"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    command = ["pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", ".", "-w", str(out)]
    done = subprocess.run([sys.executable, "-m", *command], cwd=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("torchmaml-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_the_library(wheel):
    names = set(wheel.namelist())
    for expected in ("torchmaml/__init__.py", "torchmaml/cli.py", "torchmaml/plots.py", "torchmaml/theory/__init__.py"):
        assert expected in names
    assert any(name.startswith("torchmaml/configs/") and name.endswith(".toml") for name in names)


def test_the_wheel_holds_no_lab_code(wheel):
    names = wheel.namelist()
    lab = [name for name in names if name.startswith("experiments/") or "theory_lab" in name or "/lab/" in name]
    assert lab == [], f"research code in the wheel: {lab}"
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"torchmaml"}, top
    importers = [n for n in names if n.endswith(".py") and IMPORTS_EXPERIMENTS.search(wheel.read(n).decode())]
    assert importers == [], f"packaged modules that import the lab: {importers}"
