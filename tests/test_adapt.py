"""``MetaLearner.adapt``: a plain module, the original untouched, equal to hand-written SGD steps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import small_mlp

from torchmaml import MetaLearner, inner_trajectory
from torchmaml.functional import FunctionalModel


def test_adapt_returns_a_copy_and_leaves_the_model_untouched():
    model = small_mlp()
    original = copy.deepcopy(model.state_dict())
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=1)
    x, y = torch.randn(10, 1, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    fast = learner.adapt(x, y, steps=5)
    assert type(fast) is type(model) and fast is not model
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name])
    assert not torch.equal(fast[0].weight, model[0].weight)


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_adapt_matches_hand_written_sgd(steps):
    model = small_mlp()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.05)
    x, y = torch.randn(10, 1, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(reference(x), y).backward()
        optimizer.step()
    fast = learner.adapt(x, y, steps=steps)
    for mine, theirs in zip(fast.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-12)


def test_adapt_with_an_override_rate():
    model = small_mlp()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.05)
    x, y = torch.randn(10, 1, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    slow = learner.adapt(x, y, steps=1, inner_lr=0.01)
    fast = learner.adapt(x, y, steps=1, inner_lr=0.02)
    delta_slow = slow[0].weight - model[0].weight
    delta_fast = fast[0].weight - model[0].weight
    assert torch.allclose(delta_fast, 2 * delta_slow)


def test_functional_adapt_returns_the_trajectory():
    model = small_mlp()
    functional = FunctionalModel(model)
    x, y = torch.randn(10, 1, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    trajectory = inner_trajectory(functional, functional.parameters(), x, y, F.mse_loss, 0.1, steps=3)
    assert len(trajectory) == 4
    losses = [F.mse_loss(functional(p, x), y).item() for p in trajectory]
    assert losses[-1] < losses[0]


def test_per_step_rates():
    model = small_mlp()
    functional = FunctionalModel(model)
    x, y = torch.randn(10, 1, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    zero_then_one = inner_trajectory(functional, functional.parameters(), x, y, F.mse_loss, [0.0, 0.1], steps=2)
    one = inner_trajectory(functional, functional.parameters(), x, y, F.mse_loss, 0.1, steps=1)
    for name in one[-1]:
        assert torch.allclose(zero_then_one[-1][name], one[-1][name])
