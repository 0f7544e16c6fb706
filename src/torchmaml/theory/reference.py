"""High-accuracy ``F(w)``, ``grad F(w)`` and ``grad F_i(w)`` on a ``ReferenceFamily``, for any ``MetaLearner``.

With ``D*_i`` task ``i``'s population data set (its empirical loss is the population loss ``f_i``), the exact
(``unrolled``) meta-gradient with ``D_in = D_o = D*_i`` is ``grad F_i(w) = grad_w f_i(w - alpha grad f_i(w))``, and
a quadrature rule ``(task_q, weight_q)`` over tasks gives

    F(w) = sum_q weight_q f_q(w - alpha grad f_q(w)),        grad F(w) = sum_q weight_q grad F_q(w).

These are the references against which the lab measures the bias of the stochastic estimators and the
stationarity ``||grad F(w_k)||`` along training runs.
"""

from __future__ import annotations

import torch

from torchmaml.learner import MetaLearner
from torchmaml.theory.families import ReferenceFamily
from torchmaml.theory.gradients import task_meta_gradients


def reference_task_gradients(learner: MetaLearner, family: ReferenceFamily, tasks: torch.Tensor) -> torch.Tensor:
    """``grad F_i(w)`` of each task row of ``tasks`` (population support and query sets): ``[B, P]``."""
    return task_meta_gradients(learner, family.population_batch(tasks), "unrolled")


def reference_meta_gradient(learner: MetaLearner, family: ReferenceFamily) -> torch.Tensor:
    """``grad F(w)`` by the family's quadrature over tasks: ``[P]``."""
    tasks, weights = family.quadrature()
    return weights @ reference_task_gradients(learner, family, tasks)


def reference_meta_objective(learner: MetaLearner, family: ReferenceFamily) -> float:
    """``F(w)`` by the family's quadrature over tasks (for linear regression: up to the noise variance ``s^2``)."""
    tasks, weights = family.quadrature()
    losses = learner.query_losses(family.population_batch(tasks), learner.inner_steps)[:, -1]
    return float(weights @ losses)
