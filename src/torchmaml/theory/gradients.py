"""Per-task meta-gradients and per-example derivatives, as flat vectors: the raw material of the theory lab.

- ``task_meta_gradients``: the estimate ``G_i`` of each task of a batch (any estimator), ``[B, P]``;
- ``example_gradients``: ``grad l(w; x_j, y_j)`` for every example ``j`` of one task's support set, ``[n, P]``;
- ``example_hessian_products``: ``H_j(w) v = grad^2 l(w; x_j, y_j) v`` for every example, ``[n, P]``.

Per-example derivatives assume the loss is the mean of per-example losses (true of ``F.mse_loss`` and
``F.cross_entropy`` on models without batch-dependent layers such as transductive batch norm).
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from torchmaml.estimators import TaskGradient, get_estimator
from torchmaml.estimators.hvp import hessian_vector_product
from torchmaml.execution import map_tasks
from torchmaml.functional import Params
from torchmaml.learner import MetaLearner
from torchmaml.pytree import flatten
from torchmaml.pytree import unflatten as unflatten  # re-exported for the theory lab
from torchmaml.tasks import TaskBatch


def task_meta_gradients(
    learner: MetaLearner, batch: TaskBatch, estimator: str | TaskGradient | None = None, chunk_size: int = 256
) -> torch.Tensor:
    """``G_i`` of every task in ``batch`` by ``estimator`` (a name, an estimator, or ``None`` for the learner's own),
    with respect to the model's parameters, at the learner's current point: ``[B, P]``, ``chunk_size`` tasks at
    a time."""
    if estimator is None:
        estimator = learner.estimator
    elif isinstance(estimator, str):
        estimator = get_estimator(estimator)
    problem = learner.inner_problem()
    meta = {"params": learner.functional.parameters(), "lrs": learner.rate_tensors()}

    def one_task(task):
        return flatten(estimator(problem, meta, task)[0]["params"]).detach()

    parts = [map_tasks(one_task, chunk, learner.strategy) for chunk in batch.chunks(chunk_size)]
    return torch.cat(parts)


def _example_loss(learner: MetaLearner, x: torch.Tensor, y: torch.Tensor):
    def loss(params: Params) -> torch.Tensor:
        return learner.loss(learner.functional(params, x[None]), y[None])

    return loss


def example_gradients(learner: MetaLearner, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad l(params; x_j, y_j)`` for each of the ``n`` examples of one task: ``[n, P]``."""

    def one(xj, yj):
        return flatten(grad(_example_loss(learner, xj, yj))(params))

    return vmap(one)(x, y)


def example_hessian_products(
    learner: MetaLearner, params: Params, x: torch.Tensor, y: torch.Tensor, vector: Params
) -> torch.Tensor:
    """``grad^2 l(params; x_j, y_j) vector`` for each of the ``n`` examples of one task: ``[n, P]``."""

    def one(xj, yj):
        return flatten(hessian_vector_product(_example_loss(learner, xj, yj), params, vector))

    return vmap(one)(x, y)
