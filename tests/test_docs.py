"""Docs that run: every Python block of the README and docs/ is executed, the README's quick-start verbatim;
the configuration reference is generated from the config fields; links resolve; the README stays a front door."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchmaml.config import TrainConfig
from torchmaml.reference import config_reference
from torchmaml.rl.config import RLConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
# pages other parts of the project write; their links are checked once they exist
WRITTEN_ELSEWHERE = {"docs/reliability.md"}
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
# long loops and runs shortened, so that every block runs in seconds; the quick-start also runs verbatim (e2e)
SHORTER = [
    (re.compile(r"\brange\((\d[\d_]*)\)"), lambda m: f"range({min(int(m.group(1).replace('_', '')), 20)})"),
    (re.compile(r"\biterations=\d+"), lambda m: "iterations=2"),
    (re.compile(r"\bnum_tasks=\d+"), lambda m: "num_tasks=4"),
]
DEVELOPMENT_LOG = re.compile(
    r"this session|previous session|the previous run|\bissue \d|shared the 2 cores|on the other core|"
    r"an earlier version|before this session|\bwe are at\b",
    re.I,
)


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            blocks.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


def shortened(code: str) -> str:
    for pattern, replace in SHORTER:
        code = pattern.sub(replace, code)
    return code


def run_python(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout
    )


def test_there_are_python_blocks_in_the_readme_and_docs():
    places = {place.split(":")[0] for place, _ in python_blocks()}
    assert "README.md" in places and len(places) >= 3


SLOW_PAGES = ("docs/rl.md",)  # a meta-RL run and its evaluation: ~20 s even when shortened


@pytest.mark.parametrize(
    ("place", "code"),
    [
        pytest.param(place, code, id=place, marks=[pytest.mark.e2e] if place.startswith(SLOW_PAGES) else [])
        for place, code in python_blocks()
    ],
)
def test_every_python_block_runs(place, code, tmp_path):
    done = run_python(shortened(code), tmp_path)
    assert done.returncode == 0, f"{place} failed:\n{done.stderr[-3000:]}"


@pytest.mark.e2e
def test_the_readme_quick_start_runs_verbatim(tmp_path):
    place, code = python_blocks()[0]
    assert place.startswith("README.md") and "learner.adapt(support_x, support_y" in code
    done = run_python(code, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.rsplit(":", 1)[1]) < 1.0  # adapted to the new task (MSE of the sinusoid itself ~ 3)


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for needed in ("make demo", "make test", "## Python quick-start", "## Bring your own model", "## Results"):
        assert needed in text
    results = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^\|---", results, re.M)) == 1  # one headline table
    for row in re.findall(r"^\| (?!benchmark|---).*$", results, re.M):
        assert re.search(r"\d{4}-\d{2}-\d{2}", row) and "docs/results/" in row  # dated, with its page


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        resolved = (path.parent / target).resolve()
        if str(resolved.relative_to(ROOT)) in WRITTEN_ELSEWHERE:
            continue
        assert resolved.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_user_docs_speak_of_the_software_only(path):
    found = DEVELOPMENT_LOG.findall(path.read_text())
    assert not found, f"{path.relative_to(ROOT)}: development-log prose {found}; what changed goes to CHANGELOG.md"


@pytest.mark.parametrize("model", [TrainConfig, RLConfig])
def test_every_config_key_has_a_description(model):
    missing = [name for name, field in model.model_fields.items() if not field.description]
    assert not missing


def test_the_config_reference_is_generated_from_the_fields():
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == config_reference(), "docs/config.md drifted: python -m torchmaml.reference > docs/config.md"
    supervised, rl = page.split("## Meta-RL keys")
    for name in TrainConfig.model_fields:
        assert f"| `{name}` |" in supervised
    for name in RLConfig.model_fields:
        assert f"| `{name}` |" in rl


def test_license_and_changelog():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the torchmaml authors" in license_text
    assert "## " in (ROOT / "CHANGELOG.md").read_text()


def toml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in re.finditer(r"^```toml\n(.*?)^```$", text, re.S | re.M):
            blocks.append((f"{path.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 1}", match.group(1)))
    return blocks


@pytest.mark.parametrize(("place", "text"), toml_blocks(), ids=[place for place, _ in toml_blocks()])
def test_every_config_file_in_the_docs_is_valid(place, text, tmp_path):
    from torchmaml.config import load_config

    path = tmp_path / "example.toml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.iterations >= 1, place
