"""Runs that survive crashes: SIGKILL + resume is bit-identical, corrupt checkpoints are skipped,
SIGTERM stops cleanly, divergence is caught, a full disk loses nothing."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from torchmaml import MetaLearner, TaskBatch
from torchmaml.checkpoint import CheckpointError, CheckpointStore, load_checkpoint
from torchmaml.models import mlp

QUICK = [
    "--set", "iterations=400", "--set", "pretrained_iterations=150", "--set", "checkpoint_every=25",
    "--set", "eval_tasks=20", "--set", "log_every=50", "--set", "keep_checkpoints=2", "--no-progress",
]  # fmt: skip


def cli(*args):
    return [sys.executable, "-m", "torchmaml.cli", *args]


def run_cli(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, env=env)


def start_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoints(run, count, process, pattern="*.pt", timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((run / "checkpoints").glob(pattern))) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoints appeared")


def final_weights(run, kind):
    return load_checkpoint(run / f"checkpoint-{kind}.pt")["learner"]


def iterations_logged(run, kind):
    return [json.loads(line)["iteration"] for line in (run / f"metrics-{kind}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli("train", "--config", "sinusoid-demo", *QUICK, "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert run_cli("evaluate", str(run)).returncode == 0
    return run


def assert_same_run(run, reference):
    for kind in ("maml", "pretrained"):
        mine, theirs = final_weights(run, kind), final_weights(reference, kind)
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), f"{kind}: {name} differs"
        expected = 400 if kind == "maml" else 150
        assert iterations_logged(run, kind) == list(range(1, expected + 1)), "gaps or duplicates in metrics"
    assert run_cli("evaluate", str(run)).returncode == 0
    assert (run / "evaluation.json").read_text() == (reference / "evaluation.json").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("phase", ["maml", "pretrained"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted, phase):
    run = tmp_path / "run"
    process = start_cli("train", "--config", "sinusoid-demo", *QUICK, "--out", str(run))
    wait_for_checkpoints(run, 2, process, pattern=f"{phase}-*.pt")
    time.sleep(0.07)  # an arbitrary point between checkpoints
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run_cli("train", "--resume", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"resumed {phase} at iteration [1-9]\d* from ", result.stdout), result.stdout
    assert_same_run(run, uninterrupted)


@pytest.mark.e2e
def test_sigterm_finishes_the_iteration_checkpoints_and_exits_cleanly(tmp_path, uninterrupted):
    run = tmp_path / "run"
    process = start_cli("train", "--config", "sinusoid-demo", *QUICK, "--out", str(run))
    wait_for_checkpoints(run, 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr and "torchmaml train --resume" in stderr
    newest = sorted((run / "checkpoints").glob("maml-*.pt"))[-1]
    stopped_at = load_checkpoint(newest)["iteration"]
    assert iterations_logged(run, "maml") == list(range(1, stopped_at + 1))
    result = run_cli("train", "--resume", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert_same_run(run, uninterrupted)


@pytest.mark.e2e
def test_resume_skips_a_corrupted_checkpoint_and_names_it(tmp_path, uninterrupted):
    run = tmp_path / "run"
    process = start_cli("train", "--config", "sinusoid-demo", *QUICK, "--out", str(run))
    wait_for_checkpoints(run, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    newest = sorted((run / "checkpoints").glob("maml-*.pt"))[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) - 100])  # truncated, as by a crash during a non-atomic copy
    result = run_cli("train", "--resume", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "resumed maml at iteration" in result.stdout
    assert f"{newest} is corrupted or truncated" in result.stderr
    assert_same_run(run, uninterrupted)


def test_divergence_stops_the_run_naming_the_iteration(tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "train", "--config", "sinusoid-demo", "--set", "inner_lr=1e30", "--set", "max_consecutive_skips=5",
        "--set", "checkpoint_every=2", "--no-progress", "--out", str(run),
    )  # fmt: skip
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0 and "Traceback" not in message
    assert "5 meta-steps in a row had a non-finite loss or meta-gradient (up to iteration 5)" in message
    # checkpoints 2 and 4 hold weights whose loss (at the next step) was not finite: none is good
    assert "last good checkpoint: none yet" in message


def test_a_non_finite_step_does_not_reach_the_parameters():
    learner = MetaLearner(mlp(), F.mse_loss)
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    x = torch.randn(2, 5, 1)
    bad = TaskBatch(x, torch.full((2, 5, 1), float("nan")), x, torch.randn(2, 5, 1))
    metrics = learner.meta_step(bad, optimizer)
    assert metrics["skipped"] == 1.0
    for name, value in learner.state_dict().items():
        assert torch.equal(value, before[name])
    assert not optimizer.state, "the optimiser must not have stepped"
    good = TaskBatch(x, torch.randn(2, 5, 1), x, torch.randn(2, 5, 1))
    assert learner.meta_step(good, optimizer)["skipped"] == 0.0


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, "maml", keep=2)
    first = store.save(10, {"w": torch.ones(3)})
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError) as info:
        store.save(20, {"w": torch.zeros(3)})
    monkeypatch.setattr(os, "fsync", real_fsync)
    message = str(info.value)
    assert "No space left on device" in message and f"the previous checkpoint {first} is intact" in message
    assert store.paths() == [first]
    assert torch.equal(load_checkpoint(first)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no temporary file left behind"


def test_store_keeps_the_newest_and_falls_back_past_bad_files(tmp_path):
    store = CheckpointStore(tmp_path, "maml", keep=2)
    for iteration in (1, 2, 3):
        store.save(iteration, {"iteration": iteration})
    assert [p.name for p in store.paths()] == ["maml-000000002.pt", "maml-000000003.pt"]
    store.paths()[-1].write_bytes(b"TORCHMAML-CHECKPOINT 1 0000\njunk")
    warnings = []
    path, payload = store.newest_valid(warn=warnings.append)
    assert payload["iteration"] == 2 and path.name == "maml-000000002.pt"
    assert "maml-000000003.pt is corrupted" in warnings[0]
    store.paths()[0].write_bytes(b"")
    assert store.newest_valid() is None


def test_a_second_trainer_on_a_busy_run_folder_is_refused_naming_the_holder(tmp_path):
    """The bug this prevents: `--resume` started while the first run still trains, both writing one folder."""
    run = tmp_path / "run"
    first = start_cli("train", "--config", "sinusoid-demo", *QUICK, "--out", str(run))
    try:
        wait_for_checkpoints(run, 1, first)
        second = run_cli("train", "--resume", str(run))
        assert second.returncode == 2
        assert re.fullmatch(
            rf"torchmaml: error: {re.escape(str(run))} is being trained by another process \(pid {first.pid}\); .*\n",
            second.stderr,
        ), second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert run_cli("train", "--resume", str(run), "--no-progress").returncode == 0  # the lock went with the process
