"""``torchrun ... -m torchmaml train``: the same run at any world size, on one or two "nodes", through faults.

Every run here is a real torchrun launch with gloo on loopback. The reference is the plain one-process command
``torchmaml train`` with the same configuration: weights and ``evaluation.json`` must agree (float64: relative
difference <= 1e-9; float32: <= 1e-5). The fault tests SIGKILL rank 1 mid-run (found by its environment in
/proc, nothing in torchmaml helps the test) once the first periodic checkpoint exists.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from torchmaml.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
SINUSOID = ["--config", "sinusoid", "--set", "pretrained_baseline=false", "--set", "eval_tasks=40", "--no-progress"]
TIMEOUT = 240


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def torchmaml(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "torchmaml"), *map(str, args)], env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def torchrun(*args: str | Path, processes: int = 2, launcher: tuple[str, ...] = ("--standalone",), env=None):
    command = [str(BIN / "torchrun"), *launcher, f"--nproc-per-node={processes}", "-m", "torchmaml", *map(str, args)]
    return subprocess.Popen(command, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint-maml.pt")["learner"]


def assert_same_weights(a: Path, b: Path, rel: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        difference = (wa[name] - wb[name]).abs().max()
        assert difference <= rel * wb[name].abs().max(), (name, float(difference))


def assert_same_evaluation(a: Path, b: Path, rel: float) -> None:
    for run in (a, b):
        result = torchmaml("evaluate", run)
        assert result.returncode == 0, result.stderr
    ea, eb = (json.loads((run / "evaluation.json").read_text()) for run in (a, b))
    rows_a, rows_b = ea["results"], eb["results"]
    assert len(rows_a) == len(rows_b) > 0

    def numbers(tree):
        if isinstance(tree, dict):
            return [x for key in sorted(tree) for x in numbers(tree[key])]
        if isinstance(tree, list):
            return [x for item in tree for x in numbers(item)]
        return [tree] if isinstance(tree, float) else []

    for x, y in zip(numbers(rows_a), numbers(rows_b), strict=True):
        assert x == pytest.approx(y, rel=rel, abs=1e-12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_what_one_process_trains_float64(tmp_path):
    settings = [*SINUSOID, "--set", "iterations=40", "--set", "dtype=float64", "--set", "meta_batch_size=5"]
    one = torchmaml("train", *settings, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    code, out, err = finished(torchrun("train", *settings, "--out", tmp_path / "two"))
    assert code == 0, err
    assert out.count("run folder:") == 1  # rank 0 alone reports and writes
    assert len((tmp_path / "two" / "metrics-maml.jsonl").read_text().splitlines()) == 40
    assert_same_weights(tmp_path / "one", tmp_path / "two", rel=1e-9)
    assert_same_evaluation(tmp_path / "one", tmp_path / "two", rel=1e-9)


def test_learned_rates_and_maml_plus_plus_schedules_in_float32(tmp_path):
    settings = [*SINUSOID, "--set", "iterations=30", "--set", "meta_batch_size=6", "--set", "inner_steps=2"]
    settings += [
        "--set",
        "inner_lr_mode=per_layer_per_step",
        "--set",
        "multi_step_loss_iterations=10",
        "--set",
        "eval_steps=[1, 2]",
    ]
    settings += ["--set", "first_order_iterations=5", "--set", "outer_lr_schedule=cosine"]
    one = torchmaml("train", *settings, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    code, _, err = finished(torchrun("train", *settings, "--out", tmp_path / "two"))
    assert code == 0, err
    assert_same_weights(tmp_path / "one", tmp_path / "two", rel=1e-5)
    assert_same_evaluation(tmp_path / "one", tmp_path / "two", rel=1e-5)


def test_two_nodes_on_loopback_with_alpha_maml_and_the_theory_step(tmp_path):
    """Two torchrun agents (``--nnodes=2``, c10d rendezvous on 127.0.0.1), one process each."""
    for optimizer in ("alpha_maml", "theory"):
        settings = [*SINUSOID, "--set", "iterations=15", "--set", "dtype=float64", "--set", "meta_batch_size=4"]
        settings += ["--set", f"outer_optimizer={optimizer}", "--set", "theory_batch_size=4"]
        settings += ["--set", "inner_lr_mode=scalar"] if optimizer == "alpha_maml" else []
        one = torchmaml("train", *settings, "--out", tmp_path / f"one-{optimizer}")
        assert one.returncode == 0, one.stderr
        rendezvous = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}")
        rendezvous += (f"--rdzv-id={uuid.uuid4().hex}",)
        nodes = [
            torchrun("train", *settings, "--out", tmp_path / f"node{n}-{optimizer}", processes=1, launcher=rendezvous)
            for n in range(2)
        ]
        results = [finished(node) for node in nodes]
        assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
        written = [n for n in range(2) if (tmp_path / f"node{n}-{optimizer}" / "checkpoint-maml.pt").exists()]
        assert len(written) == 1  # the node of rank 0 writes; the other writes nothing, not even its folder
        assert not (tmp_path / f"node{1 - written[0]}-{optimizer}").exists()
        assert_same_weights(tmp_path / f"one-{optimizer}", tmp_path / f"node{written[0]}-{optimizer}", rel=1e-9)


def test_resume_with_another_world_size(tmp_path):
    settings = [*SINUSOID, "--set", "dtype=float64", "--set", "meta_batch_size=4", "--set", "checkpoint_every=10"]
    reference = torchmaml("train", *settings, "--set", "iterations=40", "--out", tmp_path / "one")
    assert reference.returncode == 0, reference.stderr
    code, _, err = finished(torchrun("train", *settings, "--set", "iterations=20", "--out", tmp_path / "run"))
    assert code == 0, err
    resumed = torchmaml("train", "--resume", tmp_path / "run", "--set", "iterations=40")  # now one process
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "one", tmp_path / "run", rel=1e-9)


def _kill_rank_one_after_first_checkpoint(process: subprocess.Popen, tag: str, run: Path) -> None:
    checkpoints = run / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    while not (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for entry in Path("/proc").iterdir():
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TORCHMAML_TEST_TAG={tag}".encode() in environment and b"RANK=1" in environment:
            os.kill(int(entry.name), signal.SIGKILL)
            return
    pytest.fail("rank 1 not found")


FAULT_RUN = [*SINUSOID, "--set", "iterations=600", "--set", "dtype=float64", "--set", "meta_batch_size=8"]
FAULT_RUN += ["--set", "checkpoint_every=50"]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank to kill in /proc")
def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_ends_bit_identical(tmp_path):
    code, _, err = finished(torchrun("train", *FAULT_RUN, "--out", tmp_path / "uninterrupted"))
    assert code == 0, err
    tag = uuid.uuid4().hex
    process = torchrun(
        "train", *FAULT_RUN, "--out", tmp_path / "killed", launcher=("--standalone", "--max-restarts=1"),
        env=_env(TORCHMAML_TEST_TAG=tag),
    )  # fmt: skip
    _kill_rank_one_after_first_checkpoint(process, tag, tmp_path / "killed")
    code, out, err = finished(process)
    assert code == 0, err
    assert "resumed maml at iteration" in out  # the restarted group continued from a checkpoint
    a, b = weights(tmp_path / "uninterrupted"), weights(tmp_path / "killed")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert len((tmp_path / "killed" / "metrics-maml.jsonl").read_text().splitlines()) == 600


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank to kill in /proc")
def test_without_restarts_the_survivor_names_the_lost_rank_and_checkpoints_stay_whole(tmp_path):
    tag = uuid.uuid4().hex
    run = tmp_path / "killed"
    process = torchrun("train", *FAULT_RUN, "--out", run, env=_env(TORCHMAML_TEST_TAG=tag))
    _kill_rank_one_after_first_checkpoint(process, tag, run)
    code, _, err = finished(process)
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("torchmaml: error")]
    assert len(lines) == 1, err
    assert lines[0].startswith("torchmaml: error (rank 0): rank 1 of 2 left the process group"), lines[0]
    assert not [line for line in err.splitlines() if 'File "' in line and "torchmaml" in line]  # no traceback of ours
    saved = sorted((run / "checkpoints").glob("*.pt"))
    assert saved and all(load_checkpoint(path)["iteration"] % 50 == 0 for path in saved)
    assert not [p for p in (run / "checkpoints").iterdir() if p.suffix != ".pt"]  # no half-written temporary


def test_fewer_tasks_than_processes_is_one_line_from_rank_zero(tmp_path):
    code, _, err = finished(torchrun("train", *SINUSOID, "--set", "meta_batch_size=1", "--out", tmp_path / "run"))
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("torchmaml: error")]
    assert lines == [
        "torchmaml: error: meta_batch_size: 1 tasks cannot be shared by 2 processes; use at least 2 tasks per "
        "meta-batch or fewer processes"
    ], err
    assert not (tmp_path / "run" / "config.toml").exists()


def test_torchrun_needs_the_run_folder(tmp_path):
    code, _, err = finished(torchrun("train", *SINUSOID))
    assert code != 0
    assert "torchmaml: error: under torchrun, give the run folder with --out" in err
