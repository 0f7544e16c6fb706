"""Iterations to an epsilon-stationary point with the theory-guided step size, next to the bound ``T(epsilon)``.

Each estimator (MAML, FO-MAML, HF-MAML) meta-trains from the same initial weights with SGD at
``beta_k = c / (4 L + 2 rho alpha E||grad f_j(w_k)||)`` (``TheoryStepSize``, the paper's ``c``, the measured
``L`` and ``rho``), for several seeds (independent task draws). ``||grad F(w_k)||`` is measured by a
high-accuracy ``evaluate`` every ``evaluate_every`` iterations. Two readings of "iterations to ``epsilon``":

- ``average`` (the theorem's): the first ``T`` with ``mean_{k<T} ||grad F(w_k)|| <= epsilon`` (mean over the
  evaluated iterates and the seeds), i.e. ``E||grad F(w_eps)|| <= epsilon`` for ``w_eps`` drawn uniformly from the
  first ``T`` iterates, which is what the bound ``T(epsilon)`` guarantees;
- ``first``: the first evaluated iteration with ``||grad F(w_k)|| <= epsilon`` (median over seeds), the most
  optimistic reading.

An ``epsilon`` not reached within the budget is censored (``None``). On the reached ones the iterations are
fitted against ``1/epsilon^2`` on log-log axes: slope 1 is the bound's ``O(1/epsilon^2)``, a smaller slope a
faster rate. The plateau (median ``||grad F||`` over the last fifth of a run) is the floor a method stalls at:
the stochastic-gradient noise for MAML, and for FO-MAML also its bias, which the theory says does not vanish
(its running mean then cannot go below the plateau, however long it runs).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from experiments.theory_lab.estimators import LabEstimator
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskSource
from torchmaml.theory.assumptions import TheoryConstants
from torchmaml.theory.bounds import iteration_bound
from torchmaml.theory.statistics import power_law_fit
from torchmaml.theory.step_size import STEP_SIZE_CONSTANTS, TheoryStepSize

Evaluator = Callable[[MetaLearner], tuple[float, float]]
"""``learner -> (||grad F(w)||, F(w))`` at the learner's current weights, to high accuracy."""


@dataclass(frozen=True)
class ComplexitySettings:
    """Run length, meta-batch, seeds, how often ``grad F`` is measured, and the ``epsilon`` targets as fractions of
    ``||grad F(w_0)||``."""

    iterations: int = 3000
    batch_size: int = 50
    seeds: tuple[int, ...] = (0, 1, 2)
    evaluate_every: int = 1
    epsilons: tuple[float, ...] = (0.5, 0.3, 0.2, 0.12, 0.08, 0.05, 0.03, 0.02)


def train_with_theory_step(
    make_model: Callable[[], nn.Module],
    loss: Callable,
    inner_lr: float,
    estimator: LabEstimator,
    tasks: TaskSource,
    constants: TheoryConstants,
    settings: ComplexitySettings,
    evaluate: Evaluator,
    seed: int,
) -> dict[str, list[float]]:
    """One run: ``iteration``, ``grad_norm``, ``meta_loss`` at every evaluation, and the step sizes used."""
    learner = MetaLearner(
        make_model(), loss, inner_lr=inner_lr, estimator=estimator.name, estimator_options=estimator.options
    )
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.0)
    rule = TheoryStepSize(
        tasks,
        settings.batch_size,
        STEP_SIZE_CONSTANTS[estimator.name],
        seed + 10_000,
        constants.smoothness.value,
        constants.hessian_lipschitz.value,
    )
    generator = torch.Generator().manual_seed(seed)
    trace: dict[str, list[float]] = {"iteration": [], "grad_norm": [], "meta_loss": [], "outer_lr": []}
    for iteration in range(settings.iterations + 1):
        if iteration % settings.evaluate_every == 0 or iteration == settings.iterations:
            grad_norm, value = evaluate(learner)
            trace["iteration"].append(iteration)
            trace["grad_norm"].append(grad_norm)
            trace["meta_loss"].append(value)
        if iteration == settings.iterations:
            break
        rule.update(learner, optimizer)
        trace["outer_lr"].append(optimizer.param_groups[0]["lr"])
        learner.meta_step(tasks.sample(settings.batch_size, generator), optimizer)
    return trace


def thin(trace: dict[str, list[float]], points: int = 300) -> dict[str, list[float]]:
    """Every series of ``trace`` kept at about ``points`` evenly spaced entries (the last one included)."""

    def keep(series: list[float]) -> list[float]:
        stride = max(1, len(series) // points)
        return series[::stride] + ([series[-1]] if (len(series) - 1) % stride else [])

    return {name: keep(series) for name, series in trace.items()}


def first_hit(trace: dict[str, list[float]], epsilon: float) -> int | None:
    """The first evaluated iteration with ``||grad F|| <= epsilon``, or ``None``."""
    return next((i for i, g in zip(trace["iteration"], trace["grad_norm"], strict=True) if g <= epsilon), None)


def average_hit(traces: Sequence[dict[str, list[float]]], epsilon: float) -> int | None:
    """The first ``T`` (an evaluated iteration) at which the running mean of ``||grad F||`` over the evaluated
    iterates before it, averaged over the seeds, is at most ``epsilon``; ``None`` if it never is."""
    norms = torch.tensor([trace["grad_norm"] for trace in traces], dtype=torch.float64).mean(0)
    running = norms.cumsum(0) / torch.arange(1, norms.numel() + 1)
    iterations = traces[0]["iteration"]
    return next((iterations[k + 1] for k in range(norms.numel() - 1) if running[k] <= epsilon), None)


def plateau(trace: dict[str, list[float]]) -> float:
    """The median ``||grad F||`` over the last fifth of the run."""
    values = trace["grad_norm"]
    return statistics.median(values[-max(1, len(values) // 5) :])


def _slope(epsilons: Sequence[float], hits: Sequence[int | None]) -> dict[str, float | int]:
    pairs = [(1 / e**2, h) for e, h in zip(epsilons, hits, strict=True) if h]
    fit = power_law_fit([p[0] for p in pairs], [p[1] for p in pairs])
    return {"value": fit.value, "error": fit.error, "points": len(pairs)}


def summarise(
    traces: Sequence[dict[str, list[float]]], epsilons: Sequence[float], bound: Callable[[float], float]
) -> dict:
    """Per ``epsilon``: the theorem's ``average`` iterations, the ``first`` hit of each seed and their median (when
    every seed got there), and the bound; the slopes of both against ``1/epsilon^2``; each seed's plateau."""
    rows = []
    for epsilon in epsilons:
        hits = [first_hit(trace, epsilon) for trace in traces]
        median = statistics.median(hits) if all(h is not None for h in hits) else None
        rows.append(
            {
                "epsilon": epsilon,
                "average": average_hit(traces, epsilon),
                "first": hits,
                "first_median": median,
                "bound": bound(epsilon),
            }
        )
    return {
        "targets": rows,
        "slope_average": _slope(epsilons, [r["average"] for r in rows]),
        "slope_first": _slope(epsilons, [r["first_median"] for r in rows]),
        "plateaus": [plateau(trace) for trace in traces],
    }


def iteration_complexity(
    make_model: Callable[[], nn.Module],
    loss: Callable,
    inner_lr: float,
    estimators: Mapping[str, LabEstimator],
    tasks: TaskSource,
    constants: TheoryConstants,
    settings: ComplexitySettings,
    evaluate: Evaluator,
) -> dict:
    """Every estimator and seed; ``Delta = F(w_0) - (best F found over all runs)``; ``T(epsilon)`` with the measured
    ``L``, ``rho``, ``sigma`` at ``w_0``; per estimator its traces and ``summarise``; a JSON-ready dict."""
    traces = {
        name: [
            train_with_theory_step(make_model, loss, inner_lr, lab, tasks, constants, settings, evaluate, seed)
            for seed in settings.seeds
        ]
        for name, lab in estimators.items()
    }
    first = next(iter(traces.values()))[0]
    start_norm, start_loss = first["grad_norm"][0], first["meta_loss"][0]
    best = min(min(trace["meta_loss"]) for runs in traces.values() for trace in runs)
    gap, sigma = start_loss - best, constants.task_gradient_variance.value**0.5

    def bound(epsilon: float) -> float:
        return iteration_bound(
            gap, constants.smoothness.value, constants.hessian_lipschitz.value, inner_lr, sigma, epsilon
        )

    epsilons = [fraction * start_norm for fraction in settings.epsilons]
    return {
        "start_grad_norm": start_norm,
        "gap": gap,
        "best_meta_loss": best,
        "inner_lr": inner_lr,
        "smoothness": constants.smoothness.value,
        "hessian_lipschitz": constants.hessian_lipschitz.value,
        "sigma": sigma,
        "batch_size": settings.batch_size,
        "estimators": {
            name: {
                "label": estimators[name].label,
                "step_constant": STEP_SIZE_CONSTANTS[name],
                "traces": [thin(run) for run in runs],
                **summarise(runs, epsilons, bound),
            }
            for name, runs in traces.items()
        },
    }
