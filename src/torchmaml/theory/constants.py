"""Estimates of the constants in MAML's convergence analysis, for a model, a task family and a point ``w``.

For task ``i`` with loss ``f_i(w) = loss(model(w, x_i), y_i)`` on its support set:

- smoothness ``L``: ``||H_i(w)|| <= L``; estimated per task as the largest Hessian eigenvalue magnitude by
  power iteration on Hessian-vector products (``v <- H v / ||H v||``), then the maximum over tasks;
- Hessian Lipschitz constant ``rho``: ``||H_i(w') - H_i(w)|| <= rho ||w' - w||``; estimated as the largest
  ``||H_i(w + r u) v - H_i(w) v|| / r`` over random unit directions ``u, v`` (a lower bound on ``rho`` that
  tightens with more directions);
- task gradient norms ``||grad f_i(w)||`` (their mean enters the step size ``L_hat``).

Everything runs through ``torchmaml.execution`` (vectorised over tasks for small models).
"""

from __future__ import annotations

import torch
from torch.func import grad

from torchmaml.estimators.hvp import dot, hessian_vector_product, norm, scaled
from torchmaml.execution import map_tasks
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch


def _support_loss(learner: MetaLearner, task):
    def loss(params):
        return learner.loss(learner.functional(params, task["support_x"]), task["support_y"])

    return loss


def _random_unit(params, generator: torch.Generator):
    vector = {n: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for n, p in params.items()}
    return scaled(1 / norm(vector), vector)


@torch.no_grad()
def task_gradient_norms(learner: MetaLearner, batch: TaskBatch) -> torch.Tensor:
    """``||grad f_i(w)||`` on each task's support set: a ``[B]`` tensor."""
    params = learner.functional.parameters()

    def gradient_norm(task):
        return norm(grad(_support_loss(learner, task))(params))

    return map_tasks(gradient_norm, batch, learner.strategy, learner.chunk_size)


@torch.no_grad()
def estimate_smoothness(learner: MetaLearner, batch: TaskBatch, iterations: int = 30, seed: int = 0) -> torch.Tensor:
    """Per task, the largest ``|eigenvalue|`` of ``H_i(w)`` by ``iterations`` of power iteration: ``[B]``.

    ``L_hat = result.max()`` estimates the smoothness constant over the task family.
    """
    params = learner.functional.parameters()
    start = _random_unit(params, torch.Generator().manual_seed(seed))

    def top_eigenvalue(task):
        loss = _support_loss(learner, task)
        vector = start
        for _ in range(iterations):
            product = hessian_vector_product(loss, params, vector)
            vector = scaled(1 / (norm(product) + 1e-30), product)
        return dot(vector, hessian_vector_product(loss, params, vector)).abs()

    return map_tasks(top_eigenvalue, batch, learner.strategy, learner.chunk_size)


@torch.no_grad()
def estimate_hessian_lipschitz(
    learner: MetaLearner, batch: TaskBatch, radius: float = 1e-2, directions: int = 8, seed: int = 0
) -> torch.Tensor:
    """Per task, ``max_{u,v} ||H_i(w + r u) v - H_i(w) v|| / r`` over random unit ``u, v``: ``[B]``."""
    params = learner.functional.parameters()
    generator = torch.Generator().manual_seed(seed)
    pairs = [(_random_unit(params, generator), _random_unit(params, generator)) for _ in range(directions)]

    def hessian_change(task):
        loss = _support_loss(learner, task)
        ratios = []
        for u, v in pairs:
            moved = {n: p + radius * u[n] for n, p in params.items()}
            here, there = hessian_vector_product(loss, params, v), hessian_vector_product(loss, moved, v)
            ratios.append(norm({n: there[n] - here[n] for n in here}) / radius)
        return torch.stack(ratios).max()

    return map_tasks(hessian_change, batch, learner.strategy, learner.chunk_size)
