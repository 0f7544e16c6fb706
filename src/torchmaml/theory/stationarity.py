"""The stationarity measure ``||grad F(w)||`` of MAML's meta-objective, with its standard error.

On ``n`` tasks with exact per-task meta-gradients ``G_i`` (the ``unrolled`` estimator), ``grad F`` is estimated
by ``G = mean_i G_i``; the standard error of ``||G||`` follows from the delta method: with
``e = G / ||G||``, ``se = std_i(e . G_i) / sqrt(n)``.
"""

from __future__ import annotations

import math

import torch
from torch.func import grad

from torchmaml.execution import map_tasks
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch


def meta_gradient_norm(learner: MetaLearner, batch: TaskBatch) -> tuple[float, float]:
    """``(||grad F(w)||, standard error)`` estimated on the tasks of ``batch`` (exact second order)."""
    problem = learner.inner_problem()
    params = learner.functional.parameters()

    def flat_meta_gradient(task):
        def meta_loss(p):
            trajectory = problem.trajectory(
                {"params": p, "lrs": learner.rate_tensors()}, task["support_x"], task["support_y"]
            )
            return problem.loss(trajectory[-1], task["query_x"], task["query_y"])

        return torch.cat([g.reshape(-1) for g in grad(meta_loss)(params).values()])

    per_task = map_tasks(flat_meta_gradient, batch, learner.strategy, learner.chunk_size).detach().double()
    mean = per_task.mean(0)
    size = mean.norm().item()
    projections = per_task @ (mean / max(size, 1e-300))
    return size, projections.std().item() / math.sqrt(per_task.shape[0])
