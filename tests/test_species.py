"""Species are recorded, not sniffed: presets and config files know theirs, a run folder records its own in
``run.toml``, old folders follow the registry's one rule, and the command line dispatches through the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchmaml import species
from torchmaml.errors import ConfigError
from torchmaml.run.config_io import load_values, read_toml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name,expected", [("sinusoid", "supervised"), ("omniglot-5w1s-anil", "supervised"), ("navigation2d", "rl")]
)
def test_presets_know_their_species(name, expected):
    assert species.of_config(name) == expected


def test_a_config_file_states_its_species_or_inherits_it_through_base(tmp_path):
    stated = tmp_path / "stated.toml"
    stated.write_text('species = "rl"\niterations = 3\n')
    assert load_values(stated) == ("rl", {"iterations": 3})
    inherited = tmp_path / "inherited.toml"
    inherited.write_text('base = "navigation2d"\niterations = 7\n')
    kind, values = load_values(inherited, ["seed=3"])
    assert kind == "rl" and values["iterations"] == 7 and values["seed"] == 3 and "species" not in values
    own = tmp_path / "own.toml"
    own.write_text(f'base = "{stated.name}"\nspecies = "supervised"\n')
    assert load_values(own)[0] == "supervised"
    bad = tmp_path / "bad.toml"
    bad.write_text('species = "vision"\n')
    with pytest.raises(ConfigError, match="species must be one of 'supervised', 'rl', got 'vision'"):
        load_values(bad)


def test_a_file_without_a_species_follows_the_registry_rule(tmp_path):
    rl = tmp_path / "rl.toml"
    rl.write_text('env = "navigation2d"\n')
    plain = tmp_path / "plain.toml"
    plain.write_text("iterations = 3\n")
    assert species.of_config(rl) == "rl" and species.of_config(plain) == "supervised"


def test_a_run_folder_reads_its_record_and_old_folders_follow_the_rule(tmp_path):
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "run.toml").write_bytes(species.record("rl"))
    (recorded / "config.toml").write_text("iterations = 3\n")  # the record wins
    assert species.of_run(recorded) == "rl"
    assert read_toml(recorded / "run.toml")["torchmaml"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text('env = "navigation2d"\n')
    assert species.of_run(old) == "rl"
    assert species.of_run(tmp_path / "missing") == "supervised"  # whose commands say it is not a run


def test_species_modules_are_imported_on_first_use_only():
    code = (
        "import sys\nfrom torchmaml import species\nfrom torchmaml.cli import build_parser\n"
        "species.module('supervised')\nprint('torchmaml.rl' in sys.modules, 'gymnasium' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_the_cli_has_no_species_sniffing_and_no_theory_command():
    source = (ROOT / "src" / "torchmaml" / "cli.py").read_text()
    assert "_is_rl" not in source and '"env"' not in source and "theory" not in source


def test_the_train_command_keeps_freed_memory(tmp_path, monkeypatch):
    import torchmaml.allocator as allocator
    from torchmaml.cli import main

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    tiny = ["--set", "iterations=2", "--set", "pretrained_baseline=false", "--set", "eval_tasks=2", "--no-progress"]
    assert main(["train", "--config", "sinusoid-demo", *tiny, "--out", str(tmp_path / "run")]) == 0
    assert calls == [1]
    assert read_toml(tmp_path / "run" / "run.toml")["species"] == "supervised"
