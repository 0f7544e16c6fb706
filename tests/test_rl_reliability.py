"""Meta-RL runs on the shared runtime: killed with SIGKILL at any moment and resumed, a run ends bit-identical
to an uninterrupted one; a diverging run stops naming its last good checkpoint; the run folder records its
species and has TensorBoard scalars (real processes, tiny 2D-navigation settings: seconds each)."""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from torchmaml.checkpoint import load_checkpoint
from torchmaml.cli import main
from torchmaml.run.config_io import read_toml

TINY = [
    "--config", "navigation2d", "--set", "iterations=16", "--set", "pretrained_iterations=8",
    "--set", "meta_batch_size=3", "--set", "trajectories=3", "--set", "horizon=20", "--set", "hidden=[16]",
    "--set", "checkpoint_every=4", "--set", "keep_checkpoints=2", "--no-progress",
]  # fmt: skip
TIMING = ("seconds", "cpu_seconds")
EXPECTED = {"maml": 16, "pretrained": 8}


def cli(*args):
    return [sys.executable, "-m", "torchmaml.cli", *map(str, args)]


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def records(run, kind):
    lines = (run / f"metrics-{kind}.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def count_lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("rl-reference") / "run"
    assert main(["train", *map(str, TINY), "--out", str(run)]) == 0  # in this process: what it computes is the same
    return run


def assert_same_run(run, reference):
    for kind, expected in EXPECTED.items():
        mine, theirs = (load_checkpoint(r / f"checkpoint-{kind}.pt") for r in (run, reference))
        assert mine["iteration"] == theirs["iteration"] == expected
        assert mine["policy"].keys() == theirs["policy"].keys()
        for name, value in theirs["policy"].items():
            assert torch.equal(mine["policy"][name], value), f"{kind}: {name} differs"
        assert mine["env_steps"] == theirs["env_steps"]
        assert torch.equal(mine["generator"], theirs["generator"])
        logged = records(run, kind)
        assert [r["iteration"] for r in logged] == list(range(1, expected + 1)), "gaps or duplicates in metrics"
        assert logged == records(reference, kind)


KILL_POINTS = [  # (metrics file, line count at which the run is killed), in the order one run reaches them
    ("metrics-maml.jsonl", 1),  # before the first checkpoint: the resume starts over
    ("metrics-maml.jsonl", 6),  # between two checkpoints, while metrics lines are being written
    ("metrics-maml.jsonl", 8),  # around the write of a periodic checkpoint
    ("metrics-pretrained.jsonl", 3),  # in the second phase, the first one finished
]


@pytest.mark.e2e
def test_rl_sigkill_at_any_moment_then_resume_is_bit_identical(tmp_path, uninterrupted):
    """One run killed with SIGKILL at each of ``KILL_POINTS`` in turn (each time resumed with
    ``--resume`` in a new process), then resumed to the end, equals the uninterrupted run bit for bit."""
    run = tmp_path / "run"
    command = cli("train", *TINY, "--out", run)
    for name, lines in KILL_POINTS:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment())
        deadline = time.monotonic() + 240
        while count_lines(run / name) < lines:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"the run never got to line {lines} of {name}"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (run / "checkpoint-pretrained.pt").exists(), "killed too late: the run had finished"
        command = cli("train", "--resume", run, "--no-progress")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # the last resume may run in this process
    assert_same_run(run, uninterrupted)


def test_an_rl_run_folder_records_its_species_and_tensorboard_scalars(uninterrupted):
    record = read_toml(uninterrupted / "run.toml")
    assert record["species"] == "rl" and record["torchmaml"]
    assert list((uninterrupted / "tensorboard" / "maml").glob("events.out.tfevents.*")) or not _has_tensorboard()
    assert all(r["skipped"] == 0.0 for r in records(uninterrupted, "maml"))


def _has_tensorboard() -> bool:
    from torchmaml.extras import available

    return available("tensorboard")


def test_a_diverging_rl_run_stops_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    from torchmaml.rl import load_config
    from torchmaml.run.hooks import DivergenceError

    rl_train = importlib.import_module("torchmaml.rl.train")  # the package exports a function of that name
    real = rl_train.meta_update
    calls = []

    def diverging(policy, params, phases, config, lrs, estimator):
        new, metrics = real(policy, params, phases, config, lrs, estimator)
        calls.append(len(calls))
        if len(calls) > 4:  # from the fifth step on the returns are not finite
            metrics = {**metrics, "return_after": math.nan}
        return new, metrics

    monkeypatch.setattr(rl_train, "meta_update", diverging)
    monkeypatch.setattr(rl_train, "MAX_CONSECUTIVE_SKIPS", 3)
    config = load_config(
        "navigation2d",
        ["iterations=20", "meta_batch_size=2", "trajectories=2", "horizon=10", "hidden=[8]", "checkpoint_every=2"],
    )
    with pytest.raises(DivergenceError, match="maml diverged: 3 meta-steps in a row") as caught:
        rl_train.train(config, tmp_path / "run", progress=False)
    assert "last good checkpoint: " in str(caught.value) and "maml-000000002.pt" in str(caught.value)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics-maml.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in logged] == [0.0] * 4 + [1.0] * 2  # the step that stops the run is not logged
    # the checkpoint of iteration 4 was never confirmed good (its next step was not finite), that of 2 was
    stopped = load_checkpoint(tmp_path / "run" / "checkpoints" / "maml-000000006.pt")["policy"]
    good = load_checkpoint(tmp_path / "run" / "checkpoints" / "maml-000000004.pt")["policy"]
    assert all(torch.equal(stopped[name], good[name]) for name in good), "a skipped step changed the policy"
