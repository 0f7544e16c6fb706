"""The constants experiment: estimates against closed forms, and the constants along a meta-training run.

- ``closed_form_comparison``: on linear-regression tasks, ``estimate_constants`` at given points ``w`` next to
  the exact ``L``, ``rho``, ``sigma^2``, ``sigmã^2``, ``sigma_H^2`` of ``LinearRegressionTasks.constants``, with the
  z-score ``(estimate - exact) / error`` of each;
- ``constants_along_run``: on any ``ReferenceFamily``, meta-train with Adam and estimate every constant at
  chosen iterations, with the high-accuracy ``F(w)`` and ``||grad F(w)||``; the optimality gap at each point is
  ``F(w) - (the best F found along the run)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskSource
from torchmaml.theory.assumptions import TheoryConstants, estimate_constants
from torchmaml.theory.families import ReferenceFamily
from torchmaml.theory.gradients import unflatten
from torchmaml.theory.linear_tasks import LinearRegressionTasks
from torchmaml.theory.reference import reference_meta_gradient, reference_meta_objective

CLOSED_FORM_NAMES = (
    "smoothness",
    "hessian_lipschitz",
    "task_gradient_variance",
    "sample_gradient_variance",
    "sample_hessian_variance",
)


@dataclass(frozen=True)
class EstimationSettings:
    """How ``estimate_constants`` is called: tasks, power iterations, directions and probes."""

    num_tasks: int = 200
    power_iterations: int = 50
    directions: int = 8
    probes: int = 8
    chunk_size: int = 10
    seed: int = 0

    def estimate(self, learner: MetaLearner, population: TaskSource, best_loss: float = 0.0) -> TheoryConstants:
        return estimate_constants(
            learner,
            population,
            num_tasks=self.num_tasks,
            seed=self.seed,
            best_loss=best_loss,
            power_iterations=self.power_iterations,
            directions=self.directions,
            probes=self.probes,
            chunk_size=self.chunk_size,
        )


def set_weights(learner: MetaLearner, vector: torch.Tensor) -> None:
    """Overwrite the model's parameters with the flat ``vector``."""
    values = unflatten(vector, learner.functional.parameters())
    with torch.no_grad():
        for name, param in learner.model.named_parameters():
            param.copy_(values[name])


def closed_form_comparison(
    learner: MetaLearner,
    family: LinearRegressionTasks,
    population: TaskSource,
    points: Mapping[str, torch.Tensor],
    settings: EstimationSettings,
) -> dict:
    """At each named point: the estimated constants (``estimate_constants`` on ``population``: the same family
    with large support sets) and, per closed-form constant, ``estimate``, ``error``, ``exact`` and ``z``."""
    result = {}
    for label, point in points.items():
        set_weights(learner, point)
        estimated = settings.estimate(learner, population)
        exact = family.constants(point)
        rows = []
        for name in CLOSED_FORM_NAMES:
            value, error = getattr(estimated, name).value, getattr(estimated, name).error
            z = (value - exact[name]) / error if error > 0 else 0.0
            rows.append({"constant": name, "estimate": value, "error": error, "exact": exact[name], "z": z})
        result[label] = {"estimated": estimated.to_dict(), "comparison": rows}
    return result


def constants_along_run(
    learner: MetaLearner,
    family: ReferenceFamily,
    population: TaskSource,
    checkpoints: Sequence[int],
    settings: EstimationSettings,
    batch_size: int = 25,
    outer_lr: float = 1e-3,
    seed: int = 0,
) -> dict:
    """Meta-train ``learner`` with Adam on ``family`` (its own sizes, ``batch_size`` tasks) up to the last checkpoint,
    estimating the constants at each checkpoint iteration. Returns ``points``, ``best_meta_loss``, ``outer_lr`` and
    ``batch_size``; each point has ``iteration``, ``constants``, ``reference_meta_loss``, ``reference_grad_norm`` and
    ``gap`` (its reference ``F`` minus the best along the run)."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=outer_lr)
    generator = torch.Generator().manual_seed(seed)
    points, iteration = [], 0
    for checkpoint in sorted(checkpoints):
        while iteration < checkpoint:
            learner.meta_step(family.sample(batch_size, generator), optimizer)
            iteration += 1
        points.append(
            {
                "iteration": iteration,
                "constants": settings.estimate(learner, population).to_dict(),
                "reference_meta_loss": reference_meta_objective(learner, family),
                "reference_grad_norm": float(reference_meta_gradient(learner, family).norm()),
            }
        )
    best = min(point["reference_meta_loss"] for point in points)
    for point in points:
        point["gap"] = point["reference_meta_loss"] - best
    return {"points": points, "best_meta_loss": best, "outer_lr": outer_lr, "batch_size": batch_size}
