"""Meta-test reporting: a diverged adaptation is reported as such (valid JSON, a readable table), never NaN."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from conftest import small_mlp

from torchmaml import MetaLearner, TaskBatch
from torchmaml.evaluate import evaluate_adaptation, format_table


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
