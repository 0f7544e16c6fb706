"""A newcomer's first hour: each papercut found by trying torchmaml as a new user, held by a test."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchmaml
from torchmaml.benchmark import BENCHMARKS
from torchmaml.config import ConfigError, load_config, parse_override
from torchmaml.data.images import DatasetError
from torchmaml.data.omniglot import load_omniglot

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_predict import write_images  # noqa: E402 - the class-per-folder images of the adapt tests


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``torchmaml ARGS`` in this process: (exit code, stdout, stderr)."""
    from torchmaml.cli import main

    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse's --help
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def torchmaml_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torchmaml.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


# -- short runs are short --------------------------------------------------------------------------------


def test_the_baseline_follows_the_runs_length():
    assert load_config("sinusoid", ["iterations=300"]).pretrained_iterations == 300
    assert load_config("sinusoid").pretrained_iterations == 70_000
    assert load_config("sinusoid", ["iterations=300", "pretrained_iterations=50"]).pretrained_iterations == 50


def test_the_sinusoid_preset_does_not_wait_for_a_compilation_on_a_short_run():
    assert load_config("sinusoid").compile == "auto"  # eager until the 6000th meta-gradient


# -- devices ---------------------------------------------------------------------------------------------


def test_mps_is_accepted_where_torch_has_it(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert load_config("sinusoid", ["device=mps"]).device == "mps"


def test_mps_without_an_apple_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device: 'mps' \(Apple GPU\) is not available .*use 'cpu'"):
        load_config("sinusoid", ["device=mps"])


# -- the Omniglot hint is one the parser accepts -----------------------------------------------------------


def test_the_omniglot_download_advice_parses(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_omniglot(tmp_path / "nothing")
    assert "--set download=true" in str(info.value)
    assert parse_override("download=true") == ("download", True)
    assert load_config("omniglot-5w1s", ["download=true"]).download is True


# -- presets: inheritance, listing, help ----------------------------------------------------------------


def test_a_config_inherits_from_a_preset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "omniglot-20w1s"\ndescription = "twenty ways, my data"\ndata_dir = "here"\n')
    config = load_config(str(path), ["shots=5"])
    assert (config.ways, config.inner_steps, config.data_dir, config.shots) == (20, 5, "here", 5)


def test_the_mamlpp_preset_is_the_20_way_preset_plus_its_recipe():
    plain, mamlpp = load_config("omniglot-20w1s").model_dump(), load_config("omniglot-20w1s-mamlpp").model_dump()
    changed = {key for key in plain if plain[key] != mamlpp[key]}
    assert changed == {
        "inner_lr_mode", "batch_norm", "multi_step_loss_iterations", "first_order_iterations",
        "outer_lr_schedule", "min_outer_lr",
    }  # fmt: skip


def test_inheritance_in_a_circle_is_one_line(tmp_path):
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="inherit in a circle"):
        load_config(str(tmp_path / "a.toml"))


def test_presets_are_listed_with_a_description_and_in_train_help(capsys):
    code, listing, _ = in_process(capsys, "presets")
    assert code == 0
    lines = {line.split()[0]: line for line in listing.splitlines()}
    for name in ("sinusoid", "sinusoid-demo", "omniglot-5w1s", "navigation2d", "half-cheetah-dir"):
        assert len(lines[name].split(maxsplit=1)[1]) > 20
    assert "torchmaml[rl]" in lines["navigation2d"] and "torchmaml[mujoco]" in lines["half-cheetah-vel"]
    _, helped, _ = in_process(capsys, "train", "--help")
    assert "navigation2d" in helped and "half-cheetah-vel" in helped


# -- load_run and export -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sinusoid") / "run"
    done = torchmaml_cli("train", "--config", "sinusoid", "--set", "iterations=5", "--no-progress", "--out", str(run))
    assert done.returncode == 0, done.stderr
    return run


def test_load_run_returns_the_trained_learner_and_config(sinusoid_run):
    learner, config = torchmaml.load_run(sinusoid_run)
    assert config.benchmark == "sinusoid" and config.iterations == 5
    assert isinstance(learner, torchmaml.MetaLearner)
    x = torch.linspace(-5, 5, 10).view(-1, 1)
    fast = learner.adapt(x, torch.sin(x), steps=1)
    assert fast(x).shape == (10, 1)
    with pytest.raises(torchmaml.TorchMAMLError, match="not a run folder"):
        torchmaml.load_run(sinusoid_run.parent / "missing")


def test_export_writes_weights_plain_torch_load_reads(sinusoid_run, tmp_path, capsys):
    code, _, err = in_process(capsys, "export", str(sinusoid_run), "--out", str(tmp_path / "model.pt"))
    assert code == 0, err
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    learner, _ = torchmaml.load_run(sinusoid_run)
    expected = learner.model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    code, _, err = in_process(capsys, "export", str(sinusoid_run), "--out", str(tmp_path / "model.safetensors"))
    try:
        from safetensors.torch import load_file
    except ImportError:  # without the extra: one line naming it
        assert code == 2
        assert err.strip().endswith('pip install "torchmaml[safetensors]"') and err.count("\n") == 1
    else:
        assert code == 0
        loaded = load_file(str(tmp_path / "model.safetensors"))
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_export_never_writes_through_a_link_and_a_bad_out_is_one_line(sinusoid_run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "link.pt").symlink_to(victim)
    code, _, err = in_process(capsys, "export", str(sinusoid_run), "--out", str(tmp_path / "link.pt"))
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err
    assert victim.read_text() == "keep me"
    code, _, err = in_process(capsys, "export", str(sinusoid_run), "--out", str(victim / "model.pt"))
    assert code == 2 and err.count("\n") == 1


def test_a_run_from_a_bigger_machine_is_evaluated_here(sinusoid_run, tmp_path, capsys):
    """A saved config asking for more threads than this machine has (or a device it lacks) is used on this
    machine's CPU with a one-line note, not refused: the run was trained elsewhere."""
    import shutil

    copied = tmp_path / "elsewhere"
    shutil.copytree(sinusoid_run, copied)
    config = (copied / "config.toml").read_text()
    assert "\nthreads = 1\n" in config
    (copied / "config.toml").write_text(config.replace("\nthreads = 1\n", "\nthreads = 4096\n"))
    _, loaded = torchmaml.load_run(copied)
    assert loaded.threads is None and "threads" in capsys.readouterr().err
    code, _, err = in_process(capsys, "train", "--resume", str(copied))
    assert code == 2 and "threads" in err  # training here is refused: it would compute differently


def test_checkpoints_still_need_load_run(sinusoid_run):
    with pytest.raises(Exception):  # noqa: B017 - the checksum header: torch.load cannot read a checkpoint
        torch.load(sinusoid_run / "checkpoint-maml.pt", weights_only=True)


# -- the folder benchmark: a class split, named truthfully; adapt per image --------------------------------


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    write_images(base / "data", range(16), 5, seed=0)
    run = base / "run"
    done = torchmaml_cli(
        "train", "--config", "sinusoid-demo", "--no-progress", "--out", str(run),
        "--set", "benchmark=folder", "--set", f"data_dir={base / 'data'}", "--set", f"cache_dir={base / 'cache'}",
        "--set", "pretrained_baseline=false", "--set", "color=RGB", "--set", "image_size=16", "--set", "filters=8",
        "--set", "ways=3", "--set", "shots=1", "--set", "queries=2", "--set", "iterations=10",
        "--set", "meta_batch_size=2", "--set", "inner_lr=0.4", "--set", "eval_steps=[1]", "--set", "eval_tasks=10",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return base, run


def test_the_folder_benchmark_splits_classes(folder_run):
    base, _ = folder_run
    data = base / "data"
    overrides = [
        "benchmark=folder", "pretrained_baseline=false", f"data_dir={data}", f"cache_dir={base / 'cache'}", "ways=3"
    ]  # fmt: skip
    config = load_config("sinusoid-demo", [*overrides, "queries=2"])
    names = sorted(path.name for path in data.iterdir())
    parts = {part: set(indices) for part, indices in BENCHMARKS["folder"].split(config, names).items()}
    assert not parts["train"] & parts["test"] and not parts["train"] & parts["val"] and not parts["val"] & parts["test"]
    assert sum(len(indices) for indices in parts.values()) == 16 and len(parts["test"]) >= 3
    assert BENCHMARKS["folder"].tasks(config, "test").num_classes == len(parts["test"])
    assert BENCHMARKS["folder"].tasks(config, "train").num_classes == len(parts["train"]) < 16
    other = BENCHMARKS["folder"].split(config.model_copy(update={"split_seed": 1}), names)["test"]
    assert set(other) != parts["test"]  # the seed picks the classes


def test_evaluate_names_the_folder_split_and_claims_no_figure(folder_run):
    _, run = folder_run
    done = torchmaml_cli("evaluate", str(run))
    assert done.returncode == 0, done.stderr
    report = json.loads((run / "evaluation.json").read_text())
    assert report["split"] == "classes"  # not "maml": that is Omniglot's split
    assert report["classes"]["test"] >= 3 and sum(report["classes"].values()) == 16
    assert "test classes" in done.stdout
    assert "adaptation.png" not in done.stdout and not (run / "adaptation.png").exists()


def _prediction(run, support, query, transductive=False):
    from torchmaml.predict import adapt_and_predict

    _, out = adapt_and_predict(run, support, query, out=query.parent / f"{query.name}.csv", transductive=transductive)
    return {Path(row["file"]).name: (row["predicted_class"], row["probability"]) for row in csv.DictReader(out.open())}


def test_adapt_predicts_each_image_independently_of_the_others(folder_run, tmp_path):
    _, run = folder_run
    write_images(tmp_path / "support", (20, 21, 22), 1, seed=1)
    write_images(tmp_path / "pool", (20, 21, 22, 23, 24), 3, seed=2)
    pool = sorted((tmp_path / "pool").rglob("*.png"))
    alone, crowd = tmp_path / "alone", tmp_path / "crowd"
    alone.mkdir()
    crowd.mkdir()
    shutil.copy(pool[0], alone / "target.png")
    shutil.copy(pool[0], crowd / "target.png")
    for i, path in enumerate(pool[1:]):
        shutil.copy(path, crowd / f"other{i:02d}.png")
    assert len(list(crowd.iterdir())) == 15
    by_itself = _prediction(run, tmp_path / "support", alone)["target.png"]
    with_others = _prediction(run, tmp_path / "support", crowd)
    assert with_others["target.png"] == by_itself
    transductive = _prediction(run, tmp_path / "support", crowd, transductive=True)
    assert transductive["target.png"][1] != by_itself[1]  # batch statistics of the 15: the option is real
