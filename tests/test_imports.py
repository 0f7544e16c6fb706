"""Installs that work: every public module imports, and without the extras (gymnasium, MuJoCo, tensorboard,
matplotlib blocked as on a plain ``pip install torchmaml``) the supervised command line still works and each
optional part is one line naming its extra."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import torchmaml
from torchmaml.config import tomllib  # tomli on Python 3.10

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ROOT / "tests" / "blocked_extras.py"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _run(args: list[str], prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}\nfrom torchmaml.cli import main\nsys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)


def _blocked(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BLOCKED), *args], capture_output=True, text=True, env=_env(), timeout=300
    )


def public_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(torchmaml.__path__, "torchmaml.")]
    return sorted(name for name in names if not any(part.startswith("_") for part in name.split(".")))


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def test_the_module_list_is_complete():
    names = public_modules()
    for expected in ("torchmaml.cli", "torchmaml.load", "torchmaml.rl.half_cheetah", "torchmaml.theory.reference"):
        assert expected in names
    assert not [name for name in names if ".lab" in name], "the theory lab lives in experiments/, not the package"


def test_importing_the_library_and_cli_loads_no_optional_part():
    code = (
        "import sys, torchmaml, torchmaml.cli, torchmaml.train, torchmaml.report, torchmaml.load\n"
        "print(sorted(m for m in ('gymnasium', 'mujoco', 'matplotlib', 'tensorboard') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_supervised_cli_runs_with_every_extra_blocked(tmp_path):
    run = tmp_path / "run"
    train = _blocked(
        [
            "train",
            "--config",
            "sinusoid",
            "--set",
            "iterations=20",
            "--set",
            "eval_tasks=20",
            "--no-progress",
            "--out",
            str(run),
        ]
    )
    assert train.returncode == 0, train.stderr
    assert (run / "checkpoint-maml.pt").exists() and (run / "checkpoint-pretrained.pt").exists()
    assert 'pip install "torchmaml[tensorboard]"' in train.stderr
    assert 'pip install "torchmaml[plots]"' in train.stderr
    assert "Traceback" not in train.stderr
    assert "learning curve" not in train.stdout  # not written, so not announced
    evaluate = _blocked(["evaluate", str(run)])
    assert evaluate.returncode == 0, evaluate.stderr
    assert (run / "evaluation.json").exists()
    assert not (run / "adaptation.png").exists()
    assert "adaptation.png" not in evaluate.stdout  # never claims a file it did not write


def test_rl_without_gymnasium_is_one_line_naming_the_extra(tmp_path):
    done = _blocked(["train", "--config", "navigation2d", "--out", str(tmp_path / "nav")])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        'torchmaml: error: Meta-reinforcement learning needs gymnasium: pip install "torchmaml[rl]"'
    ]


def test_half_cheetah_without_mujoco_is_one_line_naming_the_extra(tmp_path):
    done = _run(
        ["train", "--config", "half-cheetah-dir", "--set", "iterations=1", "--out", str(tmp_path / "hc")],
        prelude="sys.modules['mujoco'] = None",
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        'torchmaml: error: The half-cheetah environments need MuJoCo: pip install "torchmaml[mujoco]"'
    )
    assert "Traceback" not in done.stderr


def test_rl_names_without_gymnasium_raise_the_hint():
    code = "import sys; sys.modules['gymnasium'] = None\nfrom torchmaml import rl\nrl.train"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 1
    assert 'MissingExtraError: Meta-reinforcement learning needs gymnasium: pip install "torchmaml[rl]"' in (
        done.stderr
    )


def test_version_matches_pyproject(capsys):
    from torchmaml.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"torchmaml {version}" == f"torchmaml {torchmaml.__version__}"


def test_extras_are_declared_and_core_has_no_optional_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for optional in ("gymnasium", "matplotlib", "tensorboard", "mujoco"):
        assert optional not in core
    extras = project["optional-dependencies"]
    for extra in ("rl", "mujoco", "plots", "tensorboard", "test", "demo"):
        assert extra in extras
    assert not any("pytest" in spec or "gymnasium" in spec for spec in extras["demo"])


def test_make_demo_installs_only_what_the_demo_needs(tmp_path):
    def dry_run(target: str) -> str:
        done = subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    demo = dry_run("demo")
    assert '-e ".[demo]"' in demo and ".[test]" not in demo
    assert '-e ".[test]"' in dry_run("test")


def test_without_extras_only_the_extras_own_modules_fail_to_import():
    code = (
        "import sys\n"
        "for name in ('gymnasium', 'mujoco', 'tensorboard', 'matplotlib', 'safetensors'):\n"
        "    sys.modules[name] = None\n"
        "import importlib, pkgutil, torchmaml\n"
        "failed = []\n"
        "for info in pkgutil.walk_packages(torchmaml.__path__, 'torchmaml.'):\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except ImportError:\n"
        "        failed.append(info.name)\n"
        "print('\\n'.join(failed))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    core = [name for name in done.stdout.split() if not name.startswith("torchmaml.rl.")]
    assert core == [], f"core modules that need an optional dependency at import: {core}"
    assert "torchmaml.rl.config" not in done.stdout.split()
