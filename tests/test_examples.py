"""The scripts in ``examples/`` run, and do what they say."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_own_training_loop_with_accumulation_clipping_and_autocast():
    spec = importlib.util.spec_from_file_location("own_training_loop", EXAMPLES / "own_training_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert math.isfinite(module.main(iterations=20))


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_data_parallel_over_two_processes_equals_one_process(tmp_path):
    """Two processes, each with half of every meta-batch, end with the weights of one process with all of it."""
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"{processes}.pt"
        command = [
            sys.executable,
            str(EXAMPLES / "data_parallel.py"),
            "--iterations",
            "3",
            "--processes",
            str(processes),
            "--port",
            _free_port(),
            "--out",
            str(out),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "identical weights: True" in done.stdout
        results[processes] = torch.load(out)
    assert torch.allclose(results[1], results[2], atol=1e-6)
    assert not torch.equal(results[1], results[1] * 0)
