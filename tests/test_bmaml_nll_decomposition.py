"""The NLL decomposition of a particle ensemble (``experiments/bmaml_nll_decomposition.py``, research code outside
the package) against hand computations on fixed inputs, and its command on a small trained run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.bmaml_nll_decomposition import SCALES, decomposition, task_statistics  # noqa: E402


def gaussian_nll(residuals: torch.Tensor, std: float) -> float:
    """Mean ``-log N(r; 0, std^2)`` written out."""
    return float((residuals.pow(2) / (2 * std**2) + math.log(std) + 0.5 * math.log(2 * math.pi)).mean())


def one_particle_task(residual_rms: float, std: float, support_rmse: float = 0.1) -> dict[str, torch.Tensor]:
    """A single particle predicting 0 for targets of root mean square ``residual_rms``, with noise ``std``."""
    y = torch.tensor([[residual_rms], [-residual_rms]], dtype=torch.float64)
    means = torch.zeros(1, 2, 1, dtype=torch.float64)
    stds = torch.full((1, 1, 1), std, dtype=torch.float64)
    return task_statistics(means, stds, y, torch.tensor(support_rmse, dtype=torch.float64))


def test_one_task_of_one_particle_matches_the_gaussian_written_out():
    stats = one_particle_task(residual_rms=0.6, std=1.5)
    residuals = torch.tensor([0.6, -0.6], dtype=torch.float64)
    for index in (0, 14, 58):
        factor = float(SCALES[index])
        assert float(stats["scaled"][index]) == pytest.approx(gaussian_nll(residuals, 1.5 * factor), rel=1e-5)
        assert float(stats["constant"][index]) == pytest.approx(gaussian_nll(residuals, factor), rel=1e-5)
    assert float(stats["noise"]) == pytest.approx(1.5)
    assert float(stats["spread"]) == 0.0
    assert float(stats["query_rmse"]) == pytest.approx(0.6)


def test_the_spread_is_the_root_mean_variance_over_particles():
    means = torch.tensor([[[1.0], [0.0]], [[3.0], [4.0]]], dtype=torch.float64)  # particles 1 and 2, two points
    stds, y = torch.ones(2, 1, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    stats = task_statistics(means, stds, y, torch.tensor(0.5, dtype=torch.float64))
    assert float(stats["spread"]) == pytest.approx(math.sqrt((1.0 + 4.0) / 2))  # variances 1 and 4
    assert float(stats["query_rmse"]) == pytest.approx(math.sqrt((2.0**2 + 2.0**2) / 2))  # mixture means 2 and 2


def test_a_per_task_scale_beats_a_global_one_when_the_noise_is_wrong_by_different_factors():
    # The optimal noise of a single Gaussian is the residual RMS: task 1 needs factor 0.5 (0.6 / 1.2), task 2
    # factor 2 (1.2 / 0.6); one global factor cannot serve both, and a constant noise of 0.6 or 1.2 serves one.
    tasks = [one_particle_task(0.6, 1.2, support_rmse=0.2), one_particle_task(1.2, 0.6, support_rmse=0.1)]
    row = decomposition(tasks)
    residuals = torch.tensor([1.0, -1.0], dtype=torch.float64)
    best = [gaussian_nll(0.6 * residuals, 0.6), gaussian_nll(1.2 * residuals, 1.2)]
    assert row["nll"] == pytest.approx((gaussian_nll(0.6 * residuals, 1.2) + gaussian_nll(1.2 * residuals, 0.6)) / 2)
    assert row["oracle scale"] == pytest.approx(sum(best) / 2, rel=1e-4)  # 0.5 and 2.0 are on the grid
    assert row["oracle scale"] < row["global scale"] - 0.1
    assert row["oracle scale"] < row["constant noise"] - 0.1
    assert row["noise / query RMSE quartiles"][1] == pytest.approx(1.25)  # ratios 2 and 0.5
    assert row["support RMSE"] == pytest.approx(0.15)
    assert row["log RMSE correlation"] == pytest.approx(-1.0)  # the larger query error has the smaller support one


def test_support_residuals_that_follow_the_query_error_correlate():
    tasks = [one_particle_task(q, 1.0, support_rmse=q / 4) for q in (0.3, 0.9, 2.0)]
    row = decomposition(tasks)
    assert row["log RMSE correlation"] == pytest.approx(1.0)
    assert row["noise slope"] == pytest.approx(0.0, abs=1e-12)  # the same noise on every task


def test_a_noise_in_proportion_to_the_error_has_slope_one():
    tasks = [one_particle_task(q, 0.5 * q) for q in (0.3, 0.9, 2.0)]
    assert decomposition(tasks)["noise slope"] == pytest.approx(1.0)
    assert decomposition(tasks)["noise / query RMSE quartiles"] == pytest.approx([0.5, 0.5, 0.5])


@pytest.mark.e2e
def test_the_command_prints_a_row_per_run(tmp_path):
    run = tmp_path / "run"
    train = [
        sys.executable, "-m", "torchmaml", "train", "--config", "sinusoid-bmaml", "--no-progress",
        "--set", "iterations=5", "--set", "eval_tasks=8", "--set", "checkpoint_every=5", "--out", str(run),
    ]  # fmt: skip
    assert subprocess.run(train, capture_output=True, timeout=300).returncode == 0
    command = [sys.executable, "-m", "experiments.bmaml_nll_decomposition", str(run), "--tasks", "4", "--steps", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[-1].split("|")
    assert row[1].strip() == str(run)
    values = [float(cell) for cell in row[2:12]]
    assert all(math.isfinite(v) for v in values) and -1 <= values[-2] <= 1
    nll, oracle, global_scale = values[:3]
    assert oracle <= global_scale <= nll + 1e-9  # the oracle picks per task from the grid that holds c = 1

    wrong_size = subprocess.run([*command, "--support", "7"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert wrong_size.returncode != 0
    assert wrong_size.stderr.strip() == f"--support 7: {run} evaluates with [5, 10] support examples"


@pytest.mark.e2e
def test_the_command_refuses_a_run_without_particles_in_one_line(tmp_path):
    run = tmp_path / "plain"
    train = [
        sys.executable, "-m", "torchmaml", "train", "--config", "sinusoid", "--no-progress", "--set", "iterations=2",
        "--set", "eval_tasks=4", "--set", "pretrained_baseline=false", "--out", str(run),
    ]  # fmt: skip
    assert subprocess.run(train, capture_output=True, timeout=300).returncode == 0
    command = [sys.executable, "-m", "experiments.bmaml_nll_decomposition", str(run), "--tasks", "4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"{run}: not a regression particle run (train it with particles and a Gaussian likelihood)"
    ]
