"""A new user's install: a fresh virtual environment, ``pip install .`` with no extras, then the supervised
command line end to end, without gymnasium, MuJoCo, matplotlib or tensorboard (about 1.5 min: e2e)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("TORCHMAML_TEST_TORCH", "torch==2.13.0")  # the CPU build of the local registry

pytestmark = pytest.mark.e2e


def run(command: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("plain") / "venv"
    for command in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", TORCH],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
    ):
        done = run(command, ROOT)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr[-3000:]}"
    return venv


def test_no_optional_part_is_installed(plain_venv):
    optional = ("gymnasium", "mujoco", "matplotlib", "tensorboard")
    code = f"import importlib.util as u; print([m for m in {optional!r} if u.find_spec(m)])"
    done = run([str(plain_venv / "bin" / "python"), "-c", code], plain_venv)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_train_and_evaluate_without_extras(plain_venv, tmp_path):
    torchmaml = str(plain_venv / "bin" / "torchmaml")
    train = run([torchmaml, "train", "--config", "sinusoid", "--set", "iterations=20", "--out", "run"], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Traceback" not in train.stderr
    evaluate = run([torchmaml, "evaluate", "run"], tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert {row["model"] for row in report["results"]} == {"maml", "pretrained"}
    assert 'pip install "torchmaml[plots]"' in evaluate.stderr


def test_rl_names_its_extra_and_version_works(plain_venv, tmp_path):
    torchmaml = str(plain_venv / "bin" / "torchmaml")
    rl = run([torchmaml, "train", "--config", "navigation2d", "--out", "nav"], tmp_path)
    assert rl.returncode == 2
    assert rl.stderr.strip().splitlines() == [
        'torchmaml: error: Meta-reinforcement learning needs gymnasium: pip install "torchmaml[rl]"'
    ]
    version = run([torchmaml, "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("torchmaml ")


def test_export_safetensors_with_its_extra(plain_venv, tmp_path):
    python, torchmaml = str(plain_venv / "bin" / "python"), str(plain_venv / "bin" / "torchmaml")
    install = run([python, "-m", "pip", "install", "--quiet", f"{ROOT}[safetensors]"], tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    train = run([torchmaml, "train", "--config", "sinusoid", "--set", "iterations=5", "--out", "run"], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    for out in ("model.safetensors", "model.pt"):
        done = run([torchmaml, "export", "run", "--out", out], tmp_path)
        assert done.returncode == 0, done.stderr
    code = (
        "import torch; from safetensors.torch import load_file\n"
        "a, b = load_file('model.safetensors'), torch.load('model.pt', weights_only=True)\n"
        "print(sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), len(a))"
    )
    check = run([python, "-c", code], tmp_path)
    assert check.returncode == 0 and check.stdout.split() == ["True", "6"], check.stdout + check.stderr
