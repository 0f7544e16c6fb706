"""All the constants of MAML's analysis at a point ``w``, with their errors and the assumption checks they allow.

``estimate_constants(learner, tasks)`` draws one batch of tasks (give the task source large support and query
sets: they stand in for each task's population) and measures, at the learner's current weights ``w``:

=========================  =======================================================  ==========================
constant                   how                                                      error
=========================  =======================================================  ==========================
``L`` (smoothness)         power iteration on support Hessians, max over tasks      sampling error of that task
``rho`` (Hessian Lipschitz)  Hessian change along random and gradient directions,   bootstrap of the max
                           max over tasks and directions (a lower bound)
``sigma^2``                task-gradient variance, corrected for sampling noise     jackknife over tasks
``sigmã^2``, ``sigma_H^2``  per-example gradient / Hessian variance (Hutchinson)     standard error over tasks
``F(w)``, ``Delta``        query loss after adaptation; ``F(w) - best_loss``        standard error over tasks
``||grad F(w)||``          norm of the mean exact meta-gradient                     delta method
=========================  =======================================================  ==========================

and checks the conditions on the inner rate that the data allow: ``alpha <= 1/L`` (an inner step does not
overshoot any task) and ``alpha <= 1/(6L)`` (the condition of Fallah et al.'s theorems), each decided only
when the measured ``L`` is more than two standard errors away from the threshold.

``L`` is the largest of the per-task estimates, each a support-set Hessian with its own sampling noise: the
maximum of noisy estimates overshoots the largest true value by about ``sqrt(2 ln m)`` standard errors over
``m`` similar tasks, so give the task source large support sets (thousands of examples for ``L``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from torchmaml.errors import ConfigError
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskSource
from torchmaml.theory.constants import estimate_hessian_lipschitz, smoothness_with_error, task_gradient_norms
from torchmaml.theory.stationarity import meta_gradient_norm
from torchmaml.theory.statistics import Estimate, bootstrap_max, mean_estimate
from torchmaml.theory.variances import (
    meta_loss,
    sample_gradient_variance,
    sample_hessian_variance,
    sample_statistics,
    task_gradient_variance,
)


@dataclass(frozen=True)
class AssumptionCheck:
    """A condition of the analysis and whether the measured constants satisfy it: ``True``/``False`` when they do
    (do not) by more than two standard errors, ``None`` when the data cannot tell; ``detail`` gives the numbers."""

    name: str
    holds: bool | None
    detail: str


@dataclass(frozen=True)
class TheoryConstants:
    """The measured constants at one point ``w`` (see the module docstring); ``to_dict`` for JSON."""

    inner_lr: float
    num_tasks: int
    support_size: int
    smoothness: Estimate
    hessian_lipschitz: Estimate
    task_gradient_variance: Estimate
    sample_gradient_variance: Estimate
    sample_hessian_variance: Estimate
    meta_loss: Estimate
    gap: Estimate
    meta_gradient_norm: Estimate
    mean_task_gradient_norm: Estimate
    checks: tuple[AssumptionCheck, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def check_inner_rate(inner_lr: float, smoothness: Estimate) -> tuple[AssumptionCheck, ...]:
    """``alpha <= 1/L`` and ``alpha <= 1/(6L)`` for the measured ``L`` (decided beyond two standard errors)."""
    checks = []
    for name, factor in (("alpha <= 1/L", 1), ("alpha <= 1/(6L)", 6)):
        value, margin = factor * inner_lr * smoothness.value, 2 * factor * inner_lr * smoothness.error
        holds = True if value + margin <= 1 else False if value - margin > 1 else None
        label = "alpha L" if factor == 1 else "6 alpha L"
        checks.append(AssumptionCheck(name, holds, f"{label} = {value:.3g} ± {margin / 2:.2g}"))
    return tuple(checks)


def estimate_constants(
    learner: MetaLearner,
    tasks: TaskSource,
    num_tasks: int = 100,
    seed: int = 0,
    best_loss: float = 0.0,
    power_iterations: int = 50,
    directions: int = 8,
    radius: float = 1e-2,
    probes: int = 8,
    chunk_size: int = 10,
) -> TheoryConstants:
    """Every constant at the learner's current weights on ``num_tasks`` tasks drawn from ``tasks``.

    ``best_loss`` is subtracted from ``F(w)`` for ``Delta``: a lower bound on ``inf F`` (0 for non-negative
    losses) or the best meta-loss found along a run. ``directions`` random direction pairs (and as many along the
    task gradient) probe ``rho`` at ``radius``; ``probes`` Rademacher vectors estimate ``sigma_H^2``.
    """
    counts = {
        "num_tasks": num_tasks,
        "power_iterations": power_iterations,
        "directions": directions,
        "probes": probes,
        "chunk_size": chunk_size,
    }
    for name, value in counts.items():
        least = 2 if name == "num_tasks" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}: must be an integer >= {least}, got {value!r}")
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
        raise ConfigError(f"radius: must be a finite number > 0, got {radius!r}")
    batch = tasks.sample(num_tasks, torch.Generator().manual_seed(seed))
    if batch.support_x.shape[1] < 2:
        raise ConfigError("the task source's support sets need at least 2 examples for per-example variances")
    chunks = list(batch.chunks(chunk_size))
    eigen = torch.cat([smoothness_with_error(learner, chunk, power_iterations, seed) for chunk in chunks])
    top = int(eigen[:, 0].argmax())
    lipschitz = torch.cat(
        [
            torch.maximum(
                estimate_hessian_lipschitz(learner, chunk, radius, directions, seed),
                estimate_hessian_lipschitz(learner, chunk, radius, directions, seed, along_gradient=True),
            )
            for chunk in chunks
        ]
    )
    stats = sample_statistics(learner, batch, probes, seed, chunk_size)
    loss = meta_loss(learner, batch)
    smoothness = Estimate(float(eigen[top, 0]), float(eigen[top, 1]))
    return TheoryConstants(
        inner_lr=learner.inner_rate_value(),
        num_tasks=num_tasks,
        support_size=batch.support_x.shape[1],
        smoothness=smoothness,
        hessian_lipschitz=bootstrap_max(lipschitz, seed=seed),
        task_gradient_variance=task_gradient_variance(stats),
        sample_gradient_variance=sample_gradient_variance(stats),
        sample_hessian_variance=sample_hessian_variance(stats),
        meta_loss=loss,
        gap=Estimate(loss.value - best_loss, loss.error),
        meta_gradient_norm=Estimate(*meta_gradient_norm(learner, batch)),
        mean_task_gradient_norm=mean_estimate(torch.cat([task_gradient_norms(learner, c) for c in chunks])),
        checks=check_inner_rate(learner.inner_rate_value(), smoothness),
    )
