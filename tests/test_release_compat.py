"""Run folders and config files of earlier releases keep working.

``tests/data/run-0.1.0-sinusoid`` was written by torchmaml 0.1.0 (a flat ``config.toml``, every key at the top;
how it was made: tests/data/README.md) and ``run-0.1.0-sinusoid.evaluation.json`` is what 0.1.0's
``torchmaml evaluate`` wrote for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchmaml.cli import main
from torchmaml.config import SECTIONS, TrainConfig, build_config, flat_values, load_config, read_toml, to_toml
from torchmaml.errors import ConfigError
from torchmaml.load import load_run

DATA = Path(__file__).parent / "data"
RELEASE_RUN = DATA / "run-0.1.0-sinusoid"


@pytest.fixture
def release_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RELEASE_RUN, run)
    return run


def test_a_release_run_folder_evaluates_to_the_numbers_that_release_wrote(release_run, capsys):
    assert "inner" not in read_toml(release_run / "config.toml")  # flat, as 0.1.0 wrote it
    assert main(["evaluate", str(release_run)]) == 0
    ours = json.loads((release_run / "evaluation.json").read_text())
    theirs = json.loads((DATA / "run-0.1.0-sinusoid.evaluation.json").read_text())
    assert ours["results"] == theirs["results"]
    assert ours["table"] == theirs["table"]


def test_a_release_run_folder_loads_and_resumes(release_run, capsys):
    learner, config = load_run(release_run)
    assert config.iterations == 4 and sum(p.numel() for p in learner.parameters()) > 0
    assert main(["train", "--resume", str(release_run), "--set", "iterations=6", "--no-progress"]) == 0
    lines = (release_run / "metrics-maml.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_configs_are_written_in_sections_and_read_back_equal(tmp_path):
    config = load_config("omniglot-5w1s", ["inner_lr=0.3", "estimator_options={checkpoint = true}"])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config))
    tables = read_toml(path)
    assert set(tables) == set(SECTIONS)
    assert tables["inner"]["inner_lr"] == 0.3 and tables["outer"]["estimator_options"] == {"checkpoint": True}
    assert build_config(tables) == config
    assert load_config(str(path)) == config


def test_every_field_has_exactly_one_section():
    placed = [key for keys in SECTIONS.values() for key in keys]
    assert sorted(placed) == sorted(TrainConfig.model_fields)


def test_a_key_in_the_wrong_section_names_its_home():
    with pytest.raises(ConfigError, match=r"inner\.outer_lr: it belongs in \[outer\]"):
        flat_values({"inner": {"outer_lr": 0.1}})
    with pytest.raises(ConfigError, match="inner_lr: it belongs in"):
        build_config({"outer": {"inner_lr": 0.1}})


def test_flat_and_sectioned_files_give_the_same_config(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text('benchmark = "sinusoid"\ninner_lr = 0.02\niterations = 7\n')
    sectioned = tmp_path / "sectioned.toml"
    sectioned.write_text('[data]\nbenchmark = "sinusoid"\n[inner]\ninner_lr = 0.02\n[outer]\niterations = 7\n')
    assert load_config(str(flat)) == load_config(str(sectioned))


def test_a_sectioned_file_inherits_a_flat_base_and_a_flat_file_a_sectioned_base_key_by_key(tmp_path):
    flat_base = tmp_path / "flat_base.toml"
    flat_base.write_text('benchmark = "sinusoid"\ninner_lr = 0.02\nouter_lr = 0.005\n')
    sectioned_child = tmp_path / "sectioned_child.toml"
    sectioned_child.write_text('base = "flat_base.toml"\n[inner]\ninner_lr = 0.03\n')
    config = load_config(str(sectioned_child))
    assert (config.inner_lr, config.outer_lr) == (0.03, 0.005)
    sectioned_base = tmp_path / "sectioned_base.toml"
    sectioned_base.write_text("[inner]\ninner_lr = 0.02\ninner_steps = 3\n[outer]\nouter_lr = 0.005\n")
    flat_child = tmp_path / "flat_child.toml"
    flat_child.write_text('base = "sectioned_base.toml"\ninner_lr = 0.04\n')
    config = load_config(str(flat_child))
    assert (config.inner_lr, config.inner_steps, config.outer_lr) == (0.04, 3, 0.005)


def test_set_takes_a_key_or_section_dot_key(tmp_path):
    assert load_config("sinusoid", ["inner.inner_lr=0.3"]).inner_lr == 0.3
    assert load_config("sinusoid", ["inner_lr=0.3"]).inner_lr == 0.3
    with pytest.raises(ConfigError, match=r"inner\.outer_lr: it belongs in \[outer\]"):
        load_config("sinusoid", ["inner.outer_lr=0.3"])
