"""Meta-test: adapt to held-out tasks and report the query metric with 95% confidence intervals.

For ``n`` tasks with per-task results ``x_1..x_n`` the report is ``mean +- 1.96 * std / sqrt(n)``
(the normal approximation used by the MAML papers; ``torchmaml.statistics``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from torchmaml.learner import MetaLearner
from torchmaml.statistics import mean_estimate
from torchmaml.tasks import TaskBatch

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AdaptationResult:
    """One row of a results table: a model adapted with ``support_size`` examples (meta-RL: rollouts) for
    ``steps`` steps; the supervised and the meta-RL evaluations share it and ``format_table``."""

    model: str
    support_size: int
    steps: int
    mean: float | None  # None when the adapted model diverged on some task (a non-finite metric)
    ci95: float | None
    diverged_tasks: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def cell(self, scale: float) -> str:
        return interval_cell(self.mean, self.ci95, self.diverged_tasks, scale=scale)


def task_mean(values: torch.Tensor) -> tuple[float | None, float | None, int]:
    """``(mean, 95% CI half-width, 0)`` of a score over tasks, or ``(None, None, n)`` when it is not finite on ``n``
    tasks (a diverged adaptation: strict JSON, no NaN)."""
    diverged = int((~torch.isfinite(values)).sum())
    if diverged:
        return None, None, diverged
    estimate = mean_estimate(values)
    return estimate.value, estimate.ci95, 0


def interval_cell(
    mean: float | None, ci95: float | None, diverged_tasks: int, digits: int = 3, scale: float = 1.0
) -> str:
    """A table cell ``mean ± ci95`` (times ``scale``), or ``diverged (n tasks)`` (``task_mean``)."""
    if mean is None or ci95 is None:
        return f"diverged ({diverged_tasks} task{'s' if diverged_tasks != 1 else ''})"
    return f"{mean * scale:.{digits}f} ± {ci95 * scale:.{digits}f}"


def adaptation_scores(
    learner: MetaLearner, batches: Sequence[TaskBatch], steps: int, metric: MetricFn, inner_lr: float | None = None
) -> torch.Tensor:
    """``metric`` on every task of ``batches`` after ``0..steps`` inner steps: ``[tasks, steps + 1]``."""
    return torch.cat([learner.query_metric(batch, steps, metric, inner_lr) for batch in batches])


def evaluate_adaptation(
    learner: MetaLearner,
    batches: Sequence[TaskBatch],
    steps: list[int],
    model_name: str,
    metric: MetricFn,
    inner_lr: float | None = None,
) -> list[AdaptationResult]:
    """The query metric after each number of inner steps in ``steps``, over the tasks of ``batches``; a step
    count where the metric is not finite on some task is reported as diverged (no mean, the task count)."""
    scores = adaptation_scores(learner, batches, max(steps), metric, inner_lr)
    return summarise(scores[:, steps], steps, model_name, batches[0].support_x.shape[1])


def evaluate_own_adaptation(
    learner: MetaLearner, batches: Sequence[TaskBatch], steps: list[int], model_name: str, metric: MetricFn
) -> list[AdaptationResult]:
    """As :func:`evaluate_adaptation`, after each step count of ``steps`` of the estimator's own adaptation
    (``MetaLearner.own_adaptation_metric``: iMAML's proximal solve, its solver steps)."""
    scores = own_adaptation_scores(learner, batches, steps, metric)
    return summarise(scores, steps, model_name, batches[0].support_x.shape[1])


def own_adaptation_scores(
    learner: MetaLearner, batches: Sequence[TaskBatch], steps: list[int], metric: MetricFn
) -> torch.Tensor:
    """``metric`` on every task of ``batches`` after each step count of ``steps`` of the estimator's own adaptation:
    ``[tasks, len(steps)]``."""
    return torch.cat([learner.own_adaptation_metric(batch, steps, metric) for batch in batches])


def summarise(scores: torch.Tensor, steps: list[int], model_name: str, support_size: int) -> list[AdaptationResult]:
    """One result per column of ``scores`` (``[tasks, len(steps)]``, column ``j`` after ``steps[j]`` steps): mean
    and 95% CI, or diverged with the count of tasks whose metric is not finite."""
    results = []
    for column, count in zip(scores.unbind(1), steps, strict=True):
        results.append(AdaptationResult(model_name, support_size, count, *task_mean(column)))
    return results


def tune_fine_tuning_lr(
    learner: MetaLearner, batches: Sequence[TaskBatch], steps: list[int], grid: list[float], metric: MetricFn
) -> float:
    """The rate in ``grid`` with the lowest ``metric`` (a loss) averaged over ``steps``, on validation tasks."""
    scores = {}
    for lr in grid:
        score = adaptation_scores(learner, batches, max(steps), metric, lr)[:, steps].mean().item()
        scores[lr] = score if math.isfinite(score) else math.inf
    return min(scores, key=scores.get)


def format_table(results: list[AdaptationResult], metric: str, scale: float = 1.0) -> str:
    """A plain-text table: one row per (model, support-set size), one column per step count.

    The ``support`` column is the number of support examples per task: ``K`` for K-shot regression, ``N K`` for
    N-way K-shot classification, the rollouts per adaptation step in meta-RL. ``scale`` multiplies every number
    (100 shows accuracies in percent).
    """
    steps = sorted({r.steps for r in results})
    width = max([12] + [len(r.model) + 2 for r in results])
    column = max([24] + [len(r.cell(scale)) + 2 for r in results])  # a huge mean still leaves a gap
    header = f"{'model':<{width}}{'support':>8}" + "".join(f"{f'{metric}, {s} steps':>{column}}" for s in steps)
    lines = [header, "-" * len(header)]
    rows: dict[tuple[str, int], dict[int, AdaptationResult]] = {}
    for r in results:
        rows.setdefault((r.model, r.support_size), {})[r.steps] = r
    for (model, k), by_step in rows.items():
        cells = "".join(f"{by_step[s].cell(scale):>{column}}" for s in steps)
        lines.append(f"{model:<{width}}{k:>8}{cells}")
    return "\n".join(lines)
