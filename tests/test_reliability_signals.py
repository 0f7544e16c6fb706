"""Issue 18, the cases that need real processes: RL runs stopped by SIGTERM and resumed past a torn metrics line
(item 4), two SIGTERMs in a row and a file size limit during logging (item 11), and the default preset giving
the same numbers on a loaded CPU (item 5)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from torchmaml.checkpoint import load_checkpoint

RL_TINY = [
    "--config", "navigation2d", "--set", "iterations=5", "--set", "meta_batch_size=3", "--set", "trajectories=3",
    "--set", "horizon=20", "--set", "hidden=[16]", "--set", "pretrained_iterations=0", "--set", "checkpoint_every=1000",
    "--no-progress",
]  # fmt: skip
SINUSOID = ["--config", "sinusoid-demo", "--set", "pretrained_baseline=false", "--set", "log_every=50", "--no-progress"]


def cli(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torchmaml.cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("timed out")


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_rl_sigterm_writes_a_stop_checkpoint_and_resumes_past_a_torn_metrics_line(tmp_path):
    run = tmp_path / "run"
    metrics = run / "metrics-maml.jsonl"
    process = cli("train", *RL_TINY, "--out", run)
    wait_for(lambda: len(lines(metrics)) >= 2, process)
    process.send_signal(signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "torchmaml train --resume" in err and "wrote " in err
    (stop,) = (run / "checkpoints").glob("maml-*.pt")
    stopped_at = load_checkpoint(stop)["iteration"]
    assert [json.loads(line)["iteration"] for line in lines(metrics)] == list(range(1, stopped_at + 1))

    with open(metrics, "a") as log:  # what a kill in the middle of a write leaves
        log.write(f'{{"iteration": {stopped_at + 1}, "return_bef')
    code, out, err = finish(cli("train", "--resume", run, "--no-progress"))
    assert code == 0, err
    assert f"resumed maml at iteration {stopped_at}" in out
    assert [json.loads(line)["iteration"] for line in lines(metrics)] == list(range(1, 6))


def test_two_sigterms_in_a_row_stop_at_once_with_one_line(tmp_path):
    run = tmp_path / "run"
    process = cli("train", *SINUSOID, "--set", "iterations=100000", "--set", "checkpoint_every=50", "--out", run)
    wait_for(lambda: any((run / "checkpoints").glob("maml-*.pt")), process)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.count("\n") == 1 and err.startswith("torchmaml: stopped by signal 15"), err
    newest = sorted((run / "checkpoints").glob("maml-*.pt"))[-1]
    assert load_checkpoint(newest)["iteration"] >= 50  # intact and loadable


def test_a_file_size_limit_during_logging_is_one_line_and_keeps_the_checkpoint(tmp_path):
    run = tmp_path / "run"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, 120_000))

    process = cli(
        "train", *SINUSOID, "--set", "iterations=5000", "--set", "checkpoint_every=100", "--set", "log_every=1",
        "--out", run, preexec_fn=limit_file_size,
    )  # fmt: skip
    code, _, err = finish(process)
    assert code == 2, err
    assert err.count("\n") == 1 and "File too large" in err and "Traceback" not in err, err
    newest = sorted((run / "checkpoints").glob("maml-*.pt"))[-1]
    assert load_checkpoint(newest)["iteration"] % 100 == 0


@pytest.mark.e2e
def test_the_default_preset_gives_the_same_numbers_on_a_loaded_cpu(tmp_path):
    """compile="auto" used to switch after 30 s of eager wall-clock time, so load changed the numbers; now the
    switch is at a fixed call (test_compile.py checks it with a fake clock). This runs the default preset
    (compile="auto") twice, once beside a busy process, and wants bit-identical weights."""
    quiet, loaded = tmp_path / "quiet", tmp_path / "loaded"
    settings = ["--set", "iterations=200", "--set", "checkpoint_every=100"]
    assert finish(cli("train", *SINUSOID, *settings, "--out", quiet))[0] == 0
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(1)]
    try:
        assert finish(cli("train", *SINUSOID, *settings, "--out", loaded))[0] == 0
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    first, second = (load_checkpoint(r / "checkpoint-maml.pt") for r in (quiet, loaded))
    assert first["compile_calls"] == second["compile_calls"] == 200
    for name, value in first["learner"].items():
        assert torch.equal(second["learner"][name], value), name
