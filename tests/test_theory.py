"""The theory measurements recover known constants; the theory-guided step size and the stationarity monitor
drive training as configured."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import small_mlp
from torch import nn

from torchmaml import MetaLearner, TaskBatch
from torchmaml.config import load_config
from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.theory import (
    estimate_hessian_lipschitz,
    estimate_smoothness,
    meta_gradient_norm,
    task_gradient_norms,
    theory_step_size,
)
from torchmaml.theory.step_size import TheoryStepSize
from torchmaml.train import train_run


def linear_regression_tasks(tasks=6, examples=30, features=4):
    x = torch.randn(tasks, examples, features, dtype=torch.float64)
    y = torch.randn(tasks, examples, 1, dtype=torch.float64)
    return TaskBatch(x, y, x, y)


def test_smoothness_is_the_top_hessian_eigenvalue_of_linear_regression():
    batch = linear_regression_tasks()
    learner = MetaLearner(nn.Linear(4, 1, bias=False).double(), F.mse_loss, inner_lr=0.05)
    hessians = 2 * batch.support_x.transpose(1, 2) @ batch.support_x / batch.support_x.shape[1]
    expected = torch.linalg.eigvalsh(hessians).abs().amax(dim=1)
    assert torch.allclose(estimate_smoothness(learner, batch, iterations=200), expected, rtol=1e-6)


def test_hessian_lipschitz_is_zero_for_quadratic_losses_and_positive_otherwise():
    batch = linear_regression_tasks()
    learner = MetaLearner(nn.Linear(4, 1, bias=False).double(), F.mse_loss)
    assert estimate_hessian_lipschitz(learner, batch).abs().max() < 1e-8
    regression = TaskBatch(*(torch.randn(3, 10, 1, dtype=torch.float64) for _ in range(4)))
    assert (estimate_hessian_lipschitz(MetaLearner(small_mlp(), F.mse_loss), regression) > 1e-3).all()


def test_task_gradient_norms_match_autograd():
    batch = linear_regression_tasks()
    model = nn.Linear(4, 1, bias=False).double()
    norms = task_gradient_norms(MetaLearner(model, F.mse_loss), batch)
    for i in range(batch.num_tasks):
        (g,) = torch.autograd.grad(F.mse_loss(model(batch.support_x[i]), batch.support_y[i]), [model.weight])
        assert norms[i].item() == pytest.approx(g.norm().item(), rel=1e-10)


def test_stationarity_measure_is_the_norm_of_the_exact_meta_gradient():
    model, batch = small_mlp(), TaskBatch(*(torch.randn(8, 6, 1, dtype=torch.float64) for _ in range(4)))
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=2)
    size, error = meta_gradient_norm(learner, batch)
    grads, _ = learner.meta_gradient(batch)
    assert size == pytest.approx(torch.cat([g.flatten() for g in grads["params"].values()]).norm().item(), rel=1e-10)
    assert 0 < error < size


def test_step_size_formula():
    assert theory_step_size(2.0, 3.0, 0.1, 5.0, 1 / 12) == pytest.approx((1 / 12) / (8 + 3.0))


@pytest.mark.e2e
def test_theory_step_size_trains_and_stop_at_epsilon_stops(tmp_path):
    config = load_config(
        "sinusoid-demo",
        ["iterations=400", "pretrained_baseline=false", "outer_optimizer=theory", "stationarity_every=100",
         "stationarity_tasks=100", "stop_at_epsilon=50.0", "checkpoint_every=100"],
    )  # fmt: skip
    train_run(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics-maml.jsonl").read_text().splitlines()]
    assert len(rows) == 100, "the monitor's first check is below epsilon=50, so the run stops at iteration 100"
    assert rows[0]["theory_L"] > 0 and rows[0]["theory_rho"] > 0
    expected = (1 / 12) / (4 * rows[0]["theory_L"] + 2 * rows[0]["theory_rho"] * 0.01 * rows[0]["mean_grad_norm"])
    assert rows[0]["outer_lr"] == pytest.approx(expected, rel=1e-5)
    assert "grad_norm" in rows[-1] and rows[-1]["grad_norm_se"] > 0


def test_the_theory_step_re_estimates_l_and_rho_on_its_schedule():
    """``every = 2``: L and rho are estimated at steps 0 and 2 on fresh independent batches (logged values change
    there and only there); a constant that was given is never estimated; ``every = 0`` estimates once."""
    learner = MetaLearner(small_mlp(), F.mse_loss, inner_lr=0.01, inner_steps=1)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.1)

    def logged(**options):
        rule = TheoryStepSize(SinusoidTasks(5, 5, dtype=torch.float64), 4, 1 / 12, seed=0, **options)
        return [rule.update(learner, optimizer) for _ in range(4)]

    rows = logged(every=2)
    for key in ("theory_L", "theory_rho"):
        values = [row[key] for row in rows]
        assert values[0] == values[1] and values[2] == values[3] and values[2] != values[0], (key, values)
    assert len({row["theory_L"] for row in logged(every=0)}) == 1
    assert {row["theory_L"] for row in logged(every=2, smoothness=3.0)} == {3.0}
