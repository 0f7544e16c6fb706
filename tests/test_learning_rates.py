"""Learned inner rates (scalar, Meta-SGD, LSLR), ANIL and the multi-step loss against independent references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import small_mlp
from test_meta_gradient import regression_batch
from torch.func import functional_call

from torchmaml import ConfigError, MetaLearner


def meta_loss_with_rates(model, batch, rates_per_step, steps, weights=None, adapted=None):
    """Hand-written MAML meta-loss: ``rates_per_step[s][name]`` is a scalar or a per-element tensor."""
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(params)
        losses = []
        for s in range(steps):
            trainable = [n for n in names if adapted is None or n in adapted]
            out = functional_call(model, fast, (batch.support_x[i],))
            grads = torch.autograd.grad(
                F.mse_loss(out, batch.support_y[i]), [fast[n] for n in trainable], create_graph=True
            )
            fast = {**fast, **{n: fast[n] - rates_per_step[s][n] * g for n, g in zip(trainable, grads, strict=True)}}
            losses.append(F.mse_loss(functional_call(model, fast, (batch.query_x[i],)), batch.query_y[i]))
        total = total + (losses[-1] if weights is None else sum(w * v for w, v in zip(weights, losses, strict=True)))
    return total / batch.num_tasks


def central_difference(f, tensor, eps=1e-6):
    grad = torch.zeros_like(tensor)
    flat = tensor.view(-1)
    for j in range(flat.numel()):
        original = flat[j].item()
        flat[j] = original + eps
        plus = f()
        flat[j] = original - eps
        minus = f()
        flat[j] = original
        grad.view(-1)[j] = (plus - minus) / (2 * eps)
    return grad


def rates_of(learner):
    steps = learner.inner_steps
    tensors = {n: p for n, p in learner.inner_rate.named_parameters()}
    return [learner.inner_rate.rate(tensors, s) for s in range(steps)]


def as_per_name(rate, names):
    return rate if isinstance(rate, dict) else {n: rate for n in names}


@pytest.mark.parametrize("mode", ["scalar", "meta_sgd", "per_layer_per_step"])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_gradient_of_learned_rates_equals_finite_differences(mode, strategy):
    model, batch = small_mlp(), regression_batch()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=2, inner_lr_mode=mode, strategy=strategy)
    with torch.no_grad():  # distinct rates per element/step so that a mix-up would show
        for p in learner.inner_rate.parameters():
            p.add_(0.02 * torch.rand_like(p))
    grads, _ = learner.meta_gradient(batch)
    names = [n for n, _ in model.named_parameters()]

    def value():
        with torch.enable_grad():
            rates = [as_per_name(r, names) for r in rates_of(learner)]
            return meta_loss_with_rates(model, batch, rates, 2).item()

    for name, rate in learner.inner_rate.named_parameters():
        reference = central_difference(value, rate.data)
        assert torch.allclose(grads["lrs"][name], reference, rtol=1e-6, atol=1e-9), name
    # and the weights' gradient still matches the hand-written meta-loss with these rates
    with torch.enable_grad():
        rates = [as_per_name({k: v.detach() for k, v in r.items()} if isinstance(r, dict) else r.detach(), names)
                 for r in rates_of(learner)]  # fmt: skip
        expected = torch.autograd.grad(meta_loss_with_rates(model, batch, rates, 2), list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), expected, strict=True):
        assert torch.allclose(grads["params"][name], g, atol=1e-12)


def test_learned_rates_are_meta_parameters_and_get_trained():
    learner = MetaLearner(small_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=1, inner_lr_mode="meta_sgd")
    model_count = sum(p.numel() for p in learner.model.parameters())
    assert sum(p.numel() for p in learner.parameters()) == 2 * model_count
    before = [p.detach().clone() for p in learner.inner_rate.parameters()]
    learner.meta_step(regression_batch(), torch.optim.SGD(learner.parameters(), lr=0.1))
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.inner_rate.parameters(), strict=True))


def test_lslr_refuses_more_steps_than_it_learned():
    learner = MetaLearner(small_mlp(), F.mse_loss, inner_steps=2, inner_lr_mode="per_layer_per_step")
    x = torch.randn(5, 1, dtype=torch.float64)
    learner.adapt(x, x, steps=2)
    with pytest.raises(ConfigError, match="learned 2 per-step rates"):
        learner.adapt(x, x, steps=3)
    learner.adapt(x, x, steps=3, inner_lr=0.1)


def test_unknown_mode():
    with pytest.raises(ConfigError, match="inner_lr_mode: unknown mode 'adam'"):
        MetaLearner(small_mlp(), F.mse_loss, inner_lr_mode="adam")


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_anil_adapts_only_the_head_and_matches_hand_written_head_only_maml(strategy):
    model, batch = small_mlp(), regression_batch()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=2, adapt_only=["4"], strategy=strategy)
    assert learner.adapted == {"4.weight", "4.bias"}
    trajectory = learner.adaptation_trajectory(batch.support_x[0], batch.support_y[0], 2)
    for point in trajectory[1:]:
        for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
            assert point[name] is trajectory[0][name] or torch.equal(point[name], trajectory[0][name])
        assert not torch.equal(point["4.weight"], trajectory[0]["4.weight"])
    grads, _ = learner.meta_gradient(batch)
    rates = [{"4.weight": 0.1, "4.bias": 0.1}] * 2
    with torch.enable_grad():
        value = meta_loss_with_rates(model, batch, rates, 2, adapted={"4.weight", "4.bias"})
        expected = torch.autograd.grad(value, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), expected, strict=True):
        assert torch.allclose(grads["params"][name], g, atol=1e-12), name


def test_adapt_only_that_matches_nothing():
    with pytest.raises(ConfigError, match=r"adapt_only: \['head'\] matches no parameter; the model has 0.weight"):
        MetaLearner(small_mlp(), F.mse_loss, adapt_only=["head"])


def test_multi_step_loss_gradient_equals_the_weighted_objective():
    model, batch = small_mlp(), regression_batch()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=3)
    learner.step_weights = (0.2, 0.3, 0.5)
    grads, metrics = learner.meta_gradient(batch)
    names = [n for n, _ in model.named_parameters()]
    rates = [{n: 0.1 for n in names}] * 3
    with torch.enable_grad():
        value = meta_loss_with_rates(model, batch, rates, 3, weights=(0.2, 0.3, 0.5))
        expected = torch.autograd.grad(value, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), expected, strict=True):
        assert torch.allclose(grads["params"][name], g, atol=1e-12), name
    assert torch.allclose(metrics["loss_after"], learner.query_losses(batch, 3)[:, 3].mean())
    learner.step_weights = (0.5, 0.5)
    with pytest.raises(ConfigError, match="one weight per inner step"):
        learner.meta_gradient(batch)
