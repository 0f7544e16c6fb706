"""Meta-test reporting: a diverged adaptation is reported as such (valid JSON, a readable table), never NaN."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from conftest import small_mlp

from torchmaml import MetaLearner, TaskBatch
from torchmaml.bayesian import GaussianLikelihood, Particles
from torchmaml.bayesian.evaluation import format_uncertainty_table, uncertainty_results
from torchmaml.evaluate import AdaptationResult, evaluate_adaptation, format_table, interval_cell


def test_a_diverged_step_count_is_null_with_the_task_count_and_the_others_are_intervals():
    torch.manual_seed(0)
    batch = TaskBatch(*(torch.randn(4, 5, 1, dtype=torch.float64) for _ in range(4)))
    learner = MetaLearner(small_mlp(), F.mse_loss, inner_lr=1e200, inner_steps=1)
    results = evaluate_adaptation(learner, [batch], [0, 3], "maml", F.mse_loss)
    before, after = results
    assert before.mean is not None and before.ci95 > 0 and before.diverged_tasks == 0
    assert after.mean is None and after.ci95 is None and after.diverged_tasks == 4
    json.loads(json.dumps([r.to_dict() for r in results], allow_nan=False))  # strict JSON
    table = format_table(results, "MSE")
    assert "diverged (4 tasks)" in table and "nan" not in table.lower()
    header, _, row = table.splitlines()
    assert header.split()[:2] == ["model", "support"] and row.split()[:2] == ["maml", "5"]  # 5 support points


def test_a_huge_mean_leaves_a_gap_between_columns():
    results = [
        AdaptationResult("maml", 10, 1, 1.7, 0.14),
        AdaptationResult("maml", 10, 5, 12341466.252, 24180734.294),
        AdaptationResult("maml", 10, 10, None, None, diverged_tasks=11),
    ]
    row = format_table(results, "MSE").splitlines()[2]
    cells = [cell.strip() for cell in row.split("  ") if cell.strip()]  # columns are two or more spaces apart
    assert cells == ["maml", "10", "1.700 ± 0.140", "12341466.252 ± 24180734.294", "diverged (11 tasks)"]


def test_one_diverged_task_is_singular():
    assert interval_cell(None, None, 1) == "diverged (1 task)"
    assert interval_cell(None, None, 2) == "diverged (2 tasks)"


def test_a_diverged_ensemble_has_null_uncertainty_scores_and_a_readable_table():
    torch.manual_seed(0)
    particles = Particles(small_mlp(), 2, GaussianLikelihood())
    batch = TaskBatch(*(torch.randn(3, 5, 1, dtype=torch.float64) for _ in range(4)))
    learner = MetaLearner(particles, loss=particles.likelihood, inner_lr=1e200, inner_steps=1)
    rows, _ = uncertainty_results(learner, {5: [batch]}, [0, 1], particles.likelihood, "maml")
    before, after = rows
    assert before["nll"]["mean"] is not None and before["coverage"]["ci95"] > 0
    assert after["nll"] == {"mean": None, "ci95": None, "diverged_tasks": 3}
    json.loads(json.dumps(rows, allow_nan=False))  # strict JSON
    table = format_uncertainty_table(rows)
    assert "diverged (3 tasks)" in table and "nan" not in table.lower()
