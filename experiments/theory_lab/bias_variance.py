"""Bias and moments of the stochastic meta-gradient estimators against a high-accuracy ``grad F``.

At the learner's point ``w`` on a ``ReferenceFamily``, for each estimator ``G_i`` (``unrolled`` MAML, ``three_batch``
with an independent Hessian batch, HF-MAML, FO-MAML):

- bias ``||E[G_i] - grad F(w)||`` against ``D_in``: the mean of ``G_i - c_i - grad F_i(w)`` over many tasks, where
  ``grad F_i`` is task ``i``'s exact meta-gradient (its population sets) and ``c_i`` the zero-mean first-order
  control variate of ``control_variate``; both remove noise without changing the mean. The query set is the
  population set too: every estimator here is linear in the query gradient (HF-MAML exactly so on quadratics)
  and ``D_o`` is independent of ``D_in``, so this leaves ``E[G_i]`` unchanged and removes the query noise. The
  squared norm of the mean is debiased (``||mean||^2 - tr Cov / N``); ``noise_floor = sqrt(tr Cov / N)`` is the
  smallest bias the draw could resolve;
- moments ``||E[G_i]||^2`` and ``E||G_i||^2`` against ``D_in``, ``D_o`` and ``D_h`` (one varied, the others at their
  base value), with sampled query sets, next to the first- and second-moment bounds (``theory.bounds``);
- the batch mean ``Gbar`` of ``B`` tasks: ``E||Gbar||^2`` over disjoint batches of the base-size draws, next to
  its bound and to ``||E G_i||^2 + (E||G_i||^2 - ||E G_i||^2) / B``.

The slope of ``log bias`` against ``log D_in`` is fitted on the resolved points (bias above twice the floor):
-1 is the ``1/D_in`` law, -1/2 the rate of the bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from experiments.theory_lab.control_variate import control_variates
from experiments.theory_lab.estimators import LabEstimator
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch
from torchmaml.theory.assumptions import TheoryConstants
from torchmaml.theory.bounds import batch_second_moment_bound, first_moment_bound, second_moment_bound
from torchmaml.theory.families import ReferenceFamily
from torchmaml.theory.gradients import task_meta_gradients
from torchmaml.theory.reference import reference_meta_gradient, reference_task_gradients
from torchmaml.theory.statistics import power_law_fit


@dataclass(frozen=True)
class BiasVarianceSettings:
    """Sizes swept and Monte Carlo budgets: ``bias_tasks`` draws per support size, ``moment_tasks`` per moment
    point (and split into batches for the ``B`` sweep)."""

    support_sizes: tuple[int, ...] = (5, 10, 20, 40, 80, 160)
    query_sizes: tuple[int, ...] = (5, 10, 20, 40, 80)
    hessian_sizes: tuple[int, ...] = (5, 10, 20, 40, 80)
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    base_support: int = 10
    base_query: int = 10
    base_hessian: int = 10
    bias_tasks: int = 4000
    moment_tasks: int = 4000
    seed: int = 0


def population_query_batch(sampled: TaskBatch, population: TaskBatch) -> TaskBatch:
    """The sampled support and Hessian sets with the population query set."""
    return TaskBatch(
        sampled.support_x,
        sampled.support_y,
        population.query_x,
        population.query_y,
        sampled.hessian_x,
        sampled.hessian_y,
    )


def _mean_norm(rows: torch.Tensor) -> tuple[float, float, float]:
    """``(||mean||, its standard error, noise floor)`` with ``||mean||^2`` debiased by ``tr Cov / N``."""
    n = rows.shape[0]
    mean = rows.mean(0)
    floor_sq = float(rows.var(0).sum()) / n
    size = math.sqrt(max(float(mean.square().sum()) - floor_sq, 0.0))
    direction = mean / max(float(mean.norm()), 1e-300)
    return size, float((rows @ direction).std()) / math.sqrt(n), math.sqrt(floor_sq)


def _moments(rows: torch.Tensor) -> dict[str, float]:
    """``||E G||^2`` (debiased) and ``E||G||^2`` with standard errors."""
    n = rows.shape[0]
    mean = rows.mean(0)
    first = float(mean.square().sum()) - float(rows.var(0).sum()) / n
    first_error = 2 * float(mean.norm()) * float((rows @ (mean / max(float(mean.norm()), 1e-300))).std()) / math.sqrt(n)
    squares = rows.square().sum(1)
    return {
        "first_moment": first,
        "first_moment_error": first_error,
        "second_moment": float(squares.mean()),
        "second_moment_error": float(squares.std()) / math.sqrt(n),
    }


def measure_bias(
    learner: MetaLearner,
    family: ReferenceFamily,
    estimators: Mapping[str, LabEstimator],
    settings: BiasVarianceSettings,
    exact_bias: Callable[[int], float] | None = None,
) -> dict[str, list[dict]]:
    """Per estimator, one row per ``D_in``: ``support_size``, ``tasks``, ``bias``, ``error``, ``noise_floor`` (and
    ``exact`` for the ``unrolled`` estimator when ``exact_bias(D_in)`` is given)."""
    generator = torch.Generator().manual_seed(settings.seed)
    rows: dict[str, list[dict]] = {name: [] for name in estimators}
    for size in settings.support_sizes:
        tasks = family.sample_tasks(settings.bias_tasks, generator)
        sampled = family.batch_for(tasks, size, 1, settings.base_hessian, generator)
        batch = population_query_batch(sampled, family.population_batch(tasks))
        reference = reference_task_gradients(learner, family, tasks)
        for name, lab in estimators.items():
            noise = control_variates(learner, batch, lab.hessian_batch)
            bias, error, floor = _mean_norm(task_meta_gradients(learner, batch, lab.build()) - noise - reference)
            row = {"support_size": size, "tasks": settings.bias_tasks, "bias": bias, "error": error}
            row["noise_floor"] = floor
            if exact_bias is not None and name == "unrolled":
                row["exact"] = exact_bias(size)
            rows[name].append(row)
    return rows


def bias_slope(rows: list[dict]) -> dict[str, float | int]:
    """The fitted slope of ``log bias`` against ``log D_in`` on the points with bias above twice the noise floor."""
    resolved = [r for r in rows if r["bias"] > 2 * r["noise_floor"]]
    fit = power_law_fit([r["support_size"] for r in resolved], [r["bias"] for r in resolved])
    return {"slope": fit.value, "error": fit.error, "points": len(resolved)}


def measure_moments(
    learner: MetaLearner,
    family: ReferenceFamily,
    estimators: Mapping[str, LabEstimator],
    settings: BiasVarianceSettings,
    constants: TheoryConstants,
    grad_norm_sq: float,
) -> dict[str, dict[str, list[dict]]]:
    """``{"support" | "query" | "hessian": {estimator: rows}}``; each row has the varied ``size``, the measured
    moments with errors and the two bounds at those sizes."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    sigma_sq, sigma_tilde_sq = constants.task_gradient_variance.value, constants.sample_gradient_variance.value
    sweeps = {"support": settings.support_sizes, "query": settings.query_sizes, "hessian": settings.hessian_sizes}
    result: dict[str, dict[str, list[dict]]] = {}
    for axis, sizes in sweeps.items():
        result[axis] = {name: [] for name in estimators}
        for size in sizes:
            d_in, d_o, d_h = settings.base_support, settings.base_query, settings.base_hessian
            d_in, d_o, d_h = (size if axis == "support" else d_in, size if axis == "query" else d_o,
                              size if axis == "hessian" else d_h)  # fmt: skip
            batch = family.batch_for(family.sample_tasks(settings.moment_tasks, generator), d_in, d_o, d_h, generator)
            for name, lab in estimators.items():
                row = {"size": size, **_moments(task_meta_gradients(learner, batch, lab.build()))}
                row["first_moment_bound"] = first_moment_bound(grad_norm_sq, sigma_tilde_sq, d_in)
                row["second_moment_bound"] = second_moment_bound(grad_norm_sq, sigma_sq, sigma_tilde_sq, d_in, d_o)
                result[axis][name].append(row)
    return result


def measure_batches(
    learner: MetaLearner,
    family: ReferenceFamily,
    estimators: Mapping[str, LabEstimator],
    settings: BiasVarianceSettings,
    constants: TheoryConstants,
    grad_norm_sq: float,
) -> dict[str, list[dict]]:
    """Per estimator, one row per ``B``: ``E||Gbar||^2`` over disjoint batches of base-size draws, its error, the
    prediction from the per-task moments and the bound."""
    generator = torch.Generator().manual_seed(settings.seed + 2)
    d_in, d_o, d_h = settings.base_support, settings.base_query, settings.base_hessian
    batch = family.batch_for(family.sample_tasks(settings.moment_tasks, generator), d_in, d_o, d_h, generator)
    sigma_sq, sigma_tilde_sq = constants.task_gradient_variance.value, constants.sample_gradient_variance.value
    result: dict[str, list[dict]] = {}
    for name, lab in estimators.items():
        per_task = task_meta_gradients(learner, batch, lab.build())
        moments = _moments(per_task)
        result[name] = []
        for size in settings.batch_sizes:
            count = per_task.shape[0] // size
            squares = per_task[: count * size].view(count, size, -1).mean(1).square().sum(1)
            spread = moments["second_moment"] - moments["first_moment"]
            result[name].append(
                {
                    "batch_size": size,
                    "batches": count,
                    "second_moment": float(squares.mean()),
                    "error": float(squares.std()) / math.sqrt(count) if count > 1 else math.nan,
                    "prediction": moments["first_moment"] + spread / size,
                    "bound": batch_second_moment_bound(grad_norm_sq, sigma_sq, sigma_tilde_sq, d_in, d_o, size),
                }
            )
    return result


def bias_variance(
    learner: MetaLearner,
    family: ReferenceFamily,
    estimators: Mapping[str, LabEstimator],
    constants: TheoryConstants,
    settings: BiasVarianceSettings,
    exact_bias: Callable[[int], float] | None = None,
) -> dict:
    """The whole experiment at the learner's point: bias, moments and batch sweeps, the slopes, the point's
    ``||grad F||`` and the constants the bounds use (a JSON-ready dict)."""
    grad_norm_sq = float(reference_meta_gradient(learner, family).square().sum())
    bias = measure_bias(learner, family, estimators, settings, exact_bias)
    return {
        "grad_norm": math.sqrt(grad_norm_sq),
        "inner_lr": learner.inner_rate_value(),
        "task_gradient_variance": constants.task_gradient_variance.value,
        "sample_gradient_variance": constants.sample_gradient_variance.value,
        "base_sizes": {
            "support": settings.base_support,
            "query": settings.base_query,
            "hessian": settings.base_hessian,
        },
        "bias": bias,
        "bias_slopes": {name: bias_slope(rows) for name, rows in bias.items()},
        "moments": measure_moments(learner, family, estimators, settings, constants, grad_norm_sq),
        "batches": measure_batches(learner, family, estimators, settings, constants, grad_norm_sq),
    }
