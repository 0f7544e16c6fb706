"""The exact (unrolled) meta-gradient against finite differences and a naive per-task loop; FO-MAML."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    finite_difference_gradient,
    flat,
    naive_meta_gradient,
    small_convnet,
    small_mlp,
)
from torch.func import functional_call

from torchmaml import MetaLearner, TaskBatch


def regression_batch(tasks=3, support=6, query=7, dtype=torch.float64) -> TaskBatch:
    return TaskBatch(
        torch.randn(tasks, support, 1, dtype=dtype),
        torch.randn(tasks, support, 1, dtype=dtype),
        torch.randn(tasks, query, 1, dtype=dtype),
        torch.randn(tasks, query, 1, dtype=dtype),
    )


def image_batch(tasks=2, ways=3, shots=2, queries=2, dtype=torch.float64) -> TaskBatch:
    def labels(per_class):
        return torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1).clone()

    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, 8, 8, dtype=dtype),
        labels(shots),
        torch.randn(tasks, ways * queries, 1, 8, 8, dtype=dtype),
        labels(queries),
    )


def learner_gradient(learner: MetaLearner, batch: TaskBatch) -> torch.Tensor:
    grads, _ = learner.meta_gradient(batch)
    return flat(grads["params"][name] for name, _ in learner.model.named_parameters())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_unrolled_matches_finite_differences_mlp(steps, strategy):
    model, batch = small_mlp(), regression_batch()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=steps, strategy=strategy)
    reference = finite_difference_gradient(model, F.mse_loss, batch, 0.1, steps)
    assert relative_error(learner_gradient(learner, batch), reference) < 1e-6


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_unrolled_matches_finite_differences_convnet_with_batch_norm(steps, strategy):
    model, batch = small_convnet(), image_batch()
    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.3, inner_steps=steps, strategy=strategy)
    reference = finite_difference_gradient(model, F.cross_entropy, batch, 0.3, steps)
    assert relative_error(learner_gradient(learner, batch), reference) < 1e-6


def test_fused_batch_norm_is_exact_with_the_loop_strategy_and_under_vmap_once_accelerated():
    model, batch = small_convnet(fused_batch_norm=True), image_batch()
    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.3, inner_steps=1)
    assert learner.strategy == "loop"
    reference = finite_difference_gradient(model, F.cross_entropy, batch, 0.3, 1)
    assert relative_error(learner_gradient(learner, batch), reference) < 1e-6
    running_mean = model[1].running_mean.clone()
    learner.meta_gradient(batch)
    assert torch.equal(model[1].running_mean, running_mean), "running statistics leaked out of a task"
    # nn.BatchNorm2d runs as torchmaml.models.accelerate's batch norm, exact under vmap too; other torch batch
    # norms (1d, 3d) keep the fused kernel, whose vmap rule is wrong at second order: refused
    vectorised = MetaLearner(model, F.cross_entropy, inner_lr=0.3, inner_steps=1, strategy="vmap")
    assert relative_error(learner_gradient(vectorised, batch), reference) < 1e-6
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="BatchNorm"):
        MetaLearner(flat, F.cross_entropy, strategy="vmap")


@pytest.mark.parametrize("strategy,chunk_size", [("vmap", None), ("chunked", 2), ("loop", None)])
@pytest.mark.parametrize("steps", [1, 2])
def test_every_strategy_equals_the_naive_per_task_loop(strategy, chunk_size, steps):
    model, batch = small_mlp(), regression_batch(tasks=5)
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.05, inner_steps=steps, strategy=strategy, chunk_size=chunk_size)
    reference = naive_meta_gradient(model, F.mse_loss, batch, 0.05, steps)
    assert relative_error(learner_gradient(learner, batch), reference) < 1e-12


def test_convnet_vmap_equals_naive_loop():
    model, batch = small_convnet(), image_batch(tasks=4)
    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.3, inner_steps=2, strategy="vmap")
    reference = naive_meta_gradient(model, F.cross_entropy, batch, 0.3, 2)
    assert relative_error(learner_gradient(learner, batch), reference) < 1e-12


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_first_order_equals_query_gradient_at_adapted_parameters(strategy):
    model, batch = small_mlp(), regression_batch(tasks=4)
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=2, estimator="first_order", strategy=strategy)
    names = [n for n, _ in model.named_parameters()]
    expected = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for i in range(batch.num_tasks):
        adapted = learner.adaptation_trajectory(batch.support_x[i], batch.support_y[i], 2)[-1]
        point = [adapted[n].clone().requires_grad_(True) for n in names]
        out = functional_call(model, dict(zip(names, point, strict=True)), (batch.query_x[i],))
        expected += flat(torch.autograd.grad(F.mse_loss(out, batch.query_y[i]), point)) / batch.num_tasks
    got = learner_gradient(learner, batch)
    assert relative_error(got, expected) < 1e-12
    exact = learner_gradient(MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=2), batch)
    assert relative_error(got, exact) > 1e-4, "first order should differ from the exact gradient"


def test_metrics_are_query_losses_before_and_after_adaptation():
    model, batch = small_mlp(), regression_batch()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=2)
    _, metrics = learner.meta_gradient(batch, loss_before=True)
    losses = learner.query_losses(batch, 2)
    assert torch.allclose(metrics["loss_before"], losses[:, 0].mean())
    assert torch.allclose(metrics["loss_after"], losses[:, 2].mean())
    _, cheap = learner.meta_gradient(batch)  # by default only what the update needs
    assert set(cheap) == {"loss_after"} and torch.equal(cheap["loss_after"], metrics["loss_after"])


def test_meta_step_updates_parameters_with_the_meta_gradient():
    model, batch = small_mlp(), regression_batch()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=1)
    before = flat(p.detach().clone() for p in model.parameters())
    gradient = learner_gradient(learner, batch)
    metrics = learner.meta_step(batch, torch.optim.SGD(learner.parameters(), lr=0.5))
    after = flat(p.detach() for p in model.parameters())
    assert torch.allclose(after, before - 0.5 * gradient)
    assert set(metrics) == {"loss_after", "skipped"} and metrics["skipped"] == 0.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_float32_matches_float64_reference():
    model64, batch64 = small_mlp(), regression_batch()
    model32 = small_mlp(torch.float32)
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    learner = MetaLearner(model32, F.mse_loss, inner_lr=0.1, inner_steps=1)
    reference = naive_meta_gradient(model64, F.mse_loss, batch64, 0.1, 1)
    assert relative_error(learner_gradient(learner, batch64.to(dtype=torch.float32)).double(), reference) < 1e-5
