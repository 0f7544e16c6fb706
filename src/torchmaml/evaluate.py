"""Meta-test: adapt to held-out tasks and report the query metric with 95% confidence intervals.

For ``n`` tasks with per-task results ``x_1..x_n`` the report is ``mean +- 1.96 * std / sqrt(n)``
(the normal approximation used by the MAML papers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A mean over tasks with the half-width of its 95% confidence interval."""

    mean: float
    ci95: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.ci95:.3f}"


def mean_ci95(values: torch.Tensor) -> Estimate:
    """Mean and 95% confidence half-width of a 1-D tensor of per-task values."""
    values = values.detach().double().flatten()
    n = values.numel()
    spread = values.std(unbiased=True).item() if n > 1 else math.nan
    return Estimate(values.mean().item(), Z_95 * spread / math.sqrt(n))


@dataclass(frozen=True)
class AdaptationResult:
    """One row of a results table: a model adapted with ``support_size`` examples for ``steps`` steps."""

    model: str
    support_size: int
    steps: int
    mean: float
    ci95: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_adaptation(
    learner: MetaLearner,
    batch: TaskBatch,
    steps: list[int],
    model_name: str,
    inner_lr: float | None = None,
) -> list[AdaptationResult]:
    """Query loss after each number of inner steps in ``steps``, over the tasks of ``batch``."""
    losses = learner.query_losses(batch, max(steps), inner_lr=inner_lr)
    support_size = batch.support_x.shape[1]
    results = []
    for count in steps:
        estimate = mean_ci95(losses[:, count])
        results.append(AdaptationResult(model_name, support_size, count, estimate.mean, estimate.ci95))
    return results


def tune_fine_tuning_lr(learner: MetaLearner, batch: TaskBatch, steps: list[int], grid: list[float]) -> float:
    """The rate in ``grid`` with the lowest query loss averaged over ``steps`` (on validation tasks)."""
    scores = {}
    for lr in grid:
        losses = learner.query_losses(batch, max(steps), inner_lr=lr)[:, steps]
        score = losses.mean().item()
        scores[lr] = score if math.isfinite(score) else math.inf
    return min(scores, key=scores.get)


def format_table(results: list[AdaptationResult], metric: str) -> str:
    """A plain-text table: one row per (model, support size), one column per step count."""
    steps = sorted({r.steps for r in results})
    header = f"{'model':<12}{'K-shot':>7}" + "".join(f"{f'{metric}, {s} steps':>22}" for s in steps)
    lines = [header, "-" * len(header)]
    rows: dict[tuple[str, int], dict[int, AdaptationResult]] = {}
    for r in results:
        rows.setdefault((r.model, r.support_size), {})[r.steps] = r
    for (model, k), by_step in rows.items():
        cells = "".join(f"{Estimate(by_step[s].mean, by_step[s].ci95)!s:>22}" for s in steps)
        lines.append(f"{model:<12}{k:>7}{cells}")
    return "\n".join(lines)
