"""The scripts in ``examples/`` run, and do what they say."""

from __future__ import annotations

import importlib.util
import math
import os
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


def test_data_parallel_over_two_processes_equals_one_process(tmp_path):
    """Two processes under torchrun, each with its share of every meta-batch (9 tasks: uneven shares), end with
    the weights of one process with all of it (float64)."""
    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = {
        1: [sys.executable],
        2: [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node=2"],
    }
    for processes, launcher in launchers.items():
        out = tmp_path / f"{processes}.pt"
        command = [*launcher, str(EXAMPLES / "data_parallel.py"), "--iterations", "5", "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        if processes == 2:
            assert "identical weights: True" in done.stdout
        results[processes] = torch.load(out)
    assert torch.allclose(results[1], results[2], rtol=1e-9, atol=0)
    assert not torch.equal(results[1], results[1] * 0)
