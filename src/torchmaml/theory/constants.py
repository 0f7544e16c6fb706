"""Estimates of the constants in MAML's convergence analysis, for a model, a task family and a point ``w``.

For task ``i`` with loss ``f_i(w) = loss(model(w, x_i), y_i)`` on its support set:

- smoothness ``L``: ``||H_i(w)|| <= L``; estimated per task as the largest Hessian eigenvalue magnitude by
  power iteration on Hessian-vector products (``v <- H v / ||H v||``), then the maximum over tasks. With the
  support loss a mean of ``n`` per-example losses, ``lambda = v^T H v = mean_j v^T H_j v``, so the per-example
  curvatures ``q_j = v^T H_j v`` give its sampling error ``std_j(q_j) / sqrt(n)`` (``smoothness_with_error``);
- Hessian Lipschitz constant ``rho``: ``||H_i(w') - H_i(w)|| <= rho ||w' - w||``; estimated as the largest
  ``||H_i(w + r u) v - H_i(w) v|| / r`` over random unit directions ``v`` and ``u`` either random or along the task
  gradient ``grad f_i(w)`` (a lower bound on ``rho`` that tightens with more directions);
- task gradient norms ``||grad f_i(w)||`` (their mean enters the step size ``L_hat``).

Everything runs through ``torchmaml.execution`` (vectorised over tasks for small models).
"""

from __future__ import annotations

import torch
from torch.func import grad

from torchmaml.estimators.hvp import dot, hessian_vector_product, norm, scaled
from torchmaml.execution import map_tasks
from torchmaml.functional import Params
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch
from torchmaml.theory.gradients import example_hessian_products, flatten


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
        vector = _power_iteration(loss, params, start, iterations)
        return dot(vector, hessian_vector_product(loss, params, vector)).abs()

    return map_tasks(top_eigenvalue, batch, learner.strategy, learner.chunk_size)


@torch.no_grad()
def smoothness_with_error(learner: MetaLearner, batch: TaskBatch, iterations: int = 30, seed: int = 0) -> torch.Tensor:
    """Per task, ``(|lambda_max|, its standard error over the support examples)``: ``[B, 2]``.

    ``lambda = mean_j q_j`` with ``q_j = v^T H_j v`` the curvature of example ``j`` along the power-iteration
    vector ``v``; the error is ``std_j(q_j) / sqrt(n)``, the sampling error of the support Hessian along ``v``.
    """
    params = learner.functional.parameters()
    start = _random_unit(params, torch.Generator().manual_seed(seed))

    def top_eigenvalue(task):
        x, y = task["support_x"], task["support_y"]
        vector = _power_iteration(_support_loss(learner, task), params, start, iterations)
        curvatures = example_hessian_products(learner, params, x, y, vector) @ flatten(vector)
        return torch.stack([curvatures.mean().abs(), curvatures.std() / x.shape[0] ** 0.5])

    return map_tasks(top_eigenvalue, batch, learner.strategy, learner.chunk_size)


def _power_iteration(loss, params: Params, start: Params, iterations: int) -> Params:
    vector = start
    for _ in range(iterations):
        product = hessian_vector_product(loss, params, vector)
        vector = scaled(1 / (norm(product) + 1e-30), product)
    return vector


@torch.no_grad()
def estimate_hessian_lipschitz(
    learner: MetaLearner,
    batch: TaskBatch,
    radius: float = 1e-2,
    directions: int = 8,
    seed: int = 0,
    along_gradient: bool = False,
) -> torch.Tensor:
    """Per task, ``max_{u,v} ||H_i(w + r u) v - H_i(w) v|| / r`` over random unit ``v`` and random unit ``u``
    (or, with ``along_gradient``, ``u = grad f_i(w) / ||grad f_i(w)||``): ``[B]``."""
    params = learner.functional.parameters()
    generator = torch.Generator().manual_seed(seed)
    pairs = [(_random_unit(params, generator), _random_unit(params, generator)) for _ in range(directions)]

    def hessian_change(task):
        loss = _support_loss(learner, task)
        if along_gradient:
            gradient = grad(loss)(params)
            pairs_here = [(scaled(1 / (norm(gradient) + 1e-30), gradient), v) for _, v in pairs]
        else:
            pairs_here = pairs
        ratios = []
        for u, v in pairs_here:
            moved = {n: p + radius * u[n] for n, p in params.items()}
            here, there = hessian_vector_product(loss, params, v), hessian_vector_product(loss, moved, v)
            ratios.append(norm({n: there[n] - here[n] for n in here}) / radius)
        return torch.stack(ratios).max()

    return map_tasks(hessian_change, batch, learner.strategy, learner.chunk_size)
