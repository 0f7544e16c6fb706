"""End to end: a short MAML-TRPO run on 2D navigation writes its files, resumes bit-identically, evaluates,
and measurably improves the post-adaptation return (threshold from measured runs, see the test)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from torchmaml.checkpoint import load_checkpoint
from torchmaml.errors import ModelError
from torchmaml.rl import evaluate, load_config, train

TINY = [
    "iterations=4",
    "meta_batch_size=3",
    "trajectories=3",
    "horizon=20",
    "hidden=[16]",
    "pretrained_iterations=2",
    "checkpoint_every=2",
    "eval_tasks=4",
    "eval_steps=2",
    "pretrained_lr_grid=[0.05, 0.2]",
]


def metrics(path):
    timing = {"seconds", "cpu_seconds"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in path.read_text().splitlines()]


def test_training_writes_its_files_resumes_bit_identically_and_evaluates(tmp_path):
    config = load_config("navigation2d", TINY)
    run = train(config, tmp_path / "run", progress=False)
    names = {p.name for p in run.iterdir()}
    assert {"config.toml", "metrics-maml.jsonl", "metrics-pretrained.jsonl", "checkpoint-maml.pt"} <= names
    assert {"checkpoint-pretrained.pt", "learning_curve.png", "checkpoints"} <= names
    assert len(metrics(run / "metrics-maml.jsonl")) == 4
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["maml-000000002.pt", "maml-000000004.pt", "pretrained-000000002.pt"]

    # an interrupted run (killed after iteration 2 of each phase) resumed to the end equals the uninterrupted one
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for path in [resumed / "checkpoint-maml.pt", resumed / "checkpoint-pretrained.pt"]:
        path.unlink()
    (resumed / "checkpoints" / "maml-000000004.pt").unlink()
    train(config, resumed, progress=False, resume=True)
    for kind in ("maml", "pretrained"):
        first, second = (load_checkpoint(r / f"checkpoint-{kind}.pt") for r in (run, resumed))
        for name, value in first["policy"].items():
            torch.testing.assert_close(second["policy"][name], value, rtol=0, atol=0)
        assert metrics(run / f"metrics-{kind}.jsonl") == metrics(resumed / f"metrics-{kind}.jsonl")

    report = evaluate(run)
    assert {"evaluation.json", "returns.png", "adaptation.png"} <= {p.name for p in run.iterdir()}
    cells = {(r["model"], r["steps"]) for r in json.loads((run / "evaluation.json").read_text())["results"]}
    assert cells == {(m, k) for m in ("maml", "pretrained", "random") for k in range(3)}
    assert report["step_sizes"]["maml"] == [0.1, 0.05]
    assert report["step_sizes"]["random"][0] in (0.05, 0.2)


def test_a_policy_that_is_not_gaussian_is_refused(tmp_path):
    config = load_config("navigation2d", TINY)
    with pytest.raises(ModelError, match="mean, log_std"):
        train(config, tmp_path, progress=False, policy=nn.Linear(2, 2))


@pytest.mark.e2e
def test_a_short_run_improves_the_post_adaptation_return(tmp_path):
    config = load_config(
        "navigation2d",
        [
            "iterations=6",
            "pretrained_iterations=0",
            "meta_batch_size=10",
            "trajectories=10",
            "eval_tasks=10",
            "eval_steps=1",
            "pretrained_lr_grid=[0.1]",
        ],
    )
    train(config, tmp_path, progress=False)
    report = evaluate(tmp_path)
    after = {r["model"]: r["mean"] for r in report["results"] if r["steps"] == 1}
    print(report["table"])
    # "random" is the initialisation MAML started from, adapted the same way on the same tasks and noise.
    assert after["maml"] > after["random"] + 20


@pytest.mark.parametrize("preset", ["half-cheetah-dir", "half-cheetah-vel"])
def test_half_cheetah_trains_and_evaluates_through_gymnasium_vector(tmp_path, preset):
    pytest.importorskip("mujoco")
    config = load_config(
        preset,
        [
            "iterations=1",
            "meta_batch_size=2",
            "trajectories=2",
            "horizon=10",
            "hidden=[8]",
            "tasks_per_round=1",
            "eval_tasks=2",
            "eval_steps=1",
        ],
    )
    train(config, tmp_path, progress=False)
    report = evaluate(tmp_path)
    assert {(r["model"], r["steps"]) for r in report["results"]} == {(m, k) for m in ("maml", "random") for k in (0, 1)}
    assert "adaptation.png" not in {p.name for p in tmp_path.iterdir()}  # the trajectory figure is navigation's


def test_time_limit_stops_training_with_a_final_checkpoint(tmp_path):
    config = load_config(
        "navigation2d", [*TINY, "iterations=1000", "pretrained_iterations=0", "time_limit_minutes=0.002"]
    )
    run = train(config, tmp_path / "run", progress=False)
    lines = (run / "metrics-maml.jsonl").read_text().splitlines()
    assert 1 <= len(lines) < 1000 and json.loads(lines[-1])["seconds"] >= 0.12
    assert load_checkpoint(run / "checkpoint-maml.pt")["iteration"] == len(lines)


def test_a_run_stopped_by_its_time_limit_continues_with_a_raised_limit(tmp_path):
    """``torchmaml train --resume RUN --set time_limit_minutes=M`` trains on to the new limit (the elapsed training
    time is kept), where the old limit would stop it at once."""
    from torchmaml.rl.train import extended_config

    config = load_config(
        "navigation2d", [*TINY, "iterations=1000", "pretrained_iterations=0", "time_limit_minutes=0.002"]
    )
    run = train(config, tmp_path / "run", progress=False)
    stopped = len((run / "metrics-maml.jsonl").read_text().splitlines())
    train(None, run, progress=False, resume=True)  # the same limit: nothing more to train
    assert len((run / "metrics-maml.jsonl").read_text().splitlines()) == stopped
    train(extended_config(run, ["time_limit_minutes=0.006"]), run, progress=False, resume=True)
    lines = [json.loads(line) for line in (run / "metrics-maml.jsonl").read_text().splitlines()]
    assert stopped < len(lines) < 1000 and lines[-1]["seconds"] >= 0.36
    assert [line["iteration"] for line in lines] == list(range(1, len(lines) + 1))


def test_a_run_folder_in_use_is_refused(tmp_path):
    from torchmaml.errors import ConfigError
    from torchmaml.runlock import exclusive_run

    with exclusive_run(tmp_path / "run"), pytest.raises(ConfigError, match=r"being trained by another process"):
        train(load_config("navigation2d", TINY), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics-maml.jsonl").exists()
