"""MAML++ per-step batch-norm weights (BNWB): row s is used at inner step s, and the meta-gradient is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import flat, unflatten
from test_meta_gradient import image_batch, relative_error
from torch import nn
from torch.func import functional_call

from torchmaml import MetaLearner
from torchmaml.config import load_config
from torchmaml.context import ExecutionContext
from torchmaml.errors import ConfigError
from torchmaml.models import MetaBatchNorm2d
from torchmaml.models.layers import in_context


def per_step_convnet(steps, ways=3):
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), MetaBatchNorm2d(3, steps=steps), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 3, 3, padding=1), MetaBatchNorm2d(3, steps=steps), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3 * 2 * 2, ways),
    ).double()  # fmt: skip


def naive_meta_loss(model, params, batch, lr, steps):
    """Hand-written MAML where the forward at inner step s (and the query at w_s) runs in a copy of the model
    specialised for step s."""
    names = [n for n, _ in model.named_parameters()]
    at_step = [in_context(model, ExecutionContext(step=s)) for s in range(steps + 1)]
    total = 0.0
    for i in range(batch.num_tasks):
        fast = list(params)
        for s in range(steps):
            out = functional_call(at_step[s], dict(zip(names, fast, strict=True)), (batch.support_x[i],))
            grads = torch.autograd.grad(F.cross_entropy(out, batch.support_y[i]), fast, create_graph=True)
            fast = [p - lr * g for p, g in zip(fast, grads, strict=True)]
        out = functional_call(at_step[steps], dict(zip(names, fast, strict=True)), (batch.query_x[i],))
        total = total + F.cross_entropy(out, batch.query_y[i])
    return total / batch.num_tasks


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_per_step_weights_gradient_equals_finite_differences(strategy):
    torch.manual_seed(0)
    steps, model, batch = 2, per_step_convnet(2), image_batch()
    with torch.no_grad():  # distinct rows, so that using the wrong row would show
        for m in model.modules():
            if isinstance(m, MetaBatchNorm2d):
                m.weight.add_(0.3 * torch.randn_like(m.weight))
                m.bias.add_(0.3 * torch.randn_like(m.bias))
    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.3, inner_steps=steps, strategy=strategy)
    grads, _ = learner.meta_gradient(batch)
    got = flat(grads["params"][n] for n, _ in model.named_parameters())
    base = [p.detach().clone() for p in model.parameters()]
    vector = flat(base)

    def value(v):
        params = [t.requires_grad_(True) for t in unflatten(v, base)]
        return naive_meta_loss(model, params, batch, 0.3, steps).item()

    reference = torch.zeros_like(vector)
    for j in range(vector.numel()):
        step = torch.zeros_like(vector)
        step[j] = 1e-6
        reference[j] = (value(vector + step) - value(vector - step)) / 2e-6
    assert relative_error(got, reference) < 1e-6
    bn_grad = grads["params"]["1.weight"]
    assert bn_grad.shape == (3, 3) and all(bn_grad[row].abs().sum() > 0 for row in range(3))


def test_rows_follow_the_inner_step():
    norm = MetaBatchNorm2d(2, steps=2)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    x = torch.randn(4, 2, 3, 3)
    for step, expected in ((0, 0.0), (1, 1.0), (2, 2.0), (5, 2.0), (None, 2.0)):
        assert in_context(norm, ExecutionContext(step=step))(x).mean().item() == pytest.approx(expected, abs=1e-6)
    assert norm(x).mean().item() == pytest.approx(2.0, abs=1e-6)  # outside the inner loop: the last row


def test_per_step_batch_norm_config():
    config = load_config("omniglot-5w1s", ["batch_norm=per_step", "inner_steps=3"])
    assert config.batch_norm == "per_step"
    with pytest.raises(ConfigError, match="batch_norm 'per_step'"):
        load_config("omniglot-5w1s", ["batch_norm=per_step", "estimator=implicit"])


def test_the_functional_model_takes_the_inner_step_from_its_explicit_context():
    from torchmaml.functional import FunctionalModel

    model = nn.Sequential(MetaBatchNorm2d(2, steps=2))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    functional, x = FunctionalModel(model), torch.randn(4, 2, 3, 3)
    params = functional.parameters()
    for step, expected in ((0, 0.0), (1, 1.0), (2, 2.0), (7, 2.0), (None, 2.0)):
        for vectorised in (True, False):
            context = ExecutionContext(vectorised=vectorised, step=step)
            assert functional(params, x, context).mean().item() == pytest.approx(expected, abs=1e-6)
    assert functional(params, x).mean().item() == pytest.approx(2.0, abs=1e-6)
