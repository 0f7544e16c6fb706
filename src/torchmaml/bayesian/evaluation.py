"""Meta-test of a particle ensemble's uncertainty: predictive NLL, interval coverage, calibration.

On every held-out task the ensemble adapts to the support set (the learner's inner update: SVGD for Bayesian
MAML, gradient steps for an ensemble of MAMLs) for ``0..K`` steps and its predictive mixture is scored on the
query set (``torchmaml.bayesian.likelihood``'s ``scores``). A classifier of one network is scored the same way, as
an ensemble of one (its softmax), so MAML's calibration can be compared with Bayesian MAML's:

- the predictive negative log-likelihood per query example, and for regression the fraction of query points inside
  the mixture's central 90% interval: per task, reported as ``mean ± 1.96 s / sqrt(n)`` over the ``n`` tasks;
- for classification the expected calibration error of the pooled query predictions (10 equal-width confidence
  bins, Guo et al. 2017), with a 95% percentile-bootstrap interval over tasks (1,000 resamples, seed 0), and the
  pooled bins for the reliability diagram.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils._pytree import tree_leaves

from torchmaml.bayesian import uncertainty
from torchmaml.bayesian.likelihood import GaussianLikelihood, Likelihood, ParticlePrediction
from torchmaml.evaluate import interval_cell, task_mean
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch


def uncertainty_scores(
    learner: MetaLearner, batches: Sequence[TaskBatch], steps: int, likelihood: Likelihood
) -> dict[str, torch.Tensor]:
    """Every task's ``likelihood.scores`` after ``0..steps`` inner steps: name -> ``[tasks, steps + 1, ...]``. A
    learner of one network (no ``Particles``) is scored as an ensemble of one (a classifier's softmax)."""
    names: list[str] = []
    sizes: list[int] = []

    def flat(prediction: ParticlePrediction | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(prediction, torch.Tensor):  # one network's logits: an ensemble of one
            prediction = {"outputs": prediction.unsqueeze(0)}
        scores = likelihood.scores(prediction, y)
        names[:], sizes[:] = list(scores), [value.numel() for value in scores.values()]
        return torch.cat([value.reshape(-1) for value in scores.values()])

    stacked = torch.cat([learner.query_metric(batch, steps, flat) for batch in batches])
    return dict(zip(names, torch.split(stacked, sizes, dim=-1), strict=True))


def uncertainty_results(
    learner: MetaLearner,
    batches_by_size: dict[int, Sequence[TaskBatch]],
    eval_steps: Sequence[int],
    likelihood: Likelihood,
    model: str,
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """One row per (support examples per task, step count): ``nll`` (and ``coverage`` for regression, or ``ece``
    with its bootstrap interval for classification), each ``{"mean", "ci95"}`` or ``{"value", "low", "high"}``; and, for
    classification, the pooled calibration bins after the most steps of each support size (the reliability
    diagram's input), keyed ``"<model>, <size> examples"``."""
    rows, calibration = [], {}
    for batches in batches_by_size.values():
        size = tree_leaves(batches[0].support_x)[0].shape[1]  # support examples per task, as the results table
        scores = uncertainty_scores(learner, batches, max(eval_steps), likelihood)
        for count in eval_steps:
            row: dict = {"model": model, "support_size": size, "steps": count}
            row["nll"] = _mean(scores["nll"][:, count, 0])
            if "coverage" in scores:
                row["coverage"] = _mean(scores["coverage"][:, count, 0])
            if "calibration" in scores:
                bins = scores["calibration"][:, count].reshape(-1, 3, likelihood.bins)
                value, low, high = uncertainty.bootstrap_interval(bins, _pooled_ece)
                row["ece"] = {"value": value, "low": low, "high": high}
            rows.append(row)
        if "calibration" in scores:
            pooled = scores["calibration"][:, max(eval_steps)].reshape(-1, 3, likelihood.bins).sum(0)
            calibration[f"{model}, {size} examples"] = pooled
    return rows, calibration


def format_uncertainty_table(rows: list[dict], coverage_level: float = 0.9) -> str:
    """A plain-text table of ``uncertainty_results``' rows."""
    column = max([22] + [len(_cell(row[key])) + 2 for row in rows for key in ("nll", "coverage") if key in row])
    header = f"{'model':<12}{'support':>8}{'steps':>6}{'predictive NLL':>{column}}"
    regression = any("coverage" in row for row in rows)
    header += f"{f'{coverage_level:.0%} coverage':>{column}}" if regression else f"{'ECE (95% bootstrap)':>30}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = f"{row['model']:<12}{row['support_size']:>8}{row['steps']:>6}{_cell(row['nll']):>{column}}"
        if regression:
            line += f"{_cell(row['coverage']):>{column}}"
        else:
            value, low, high = row["ece"]["value"], row["ece"]["low"], row["ece"]["high"]
            line += f"{f'{value:.4f} [{low:.4f}, {high:.4f}]':>30}"
        lines.append(line)
    return "\n".join(lines)


def posterior_predictive_panels(
    learner: MetaLearner, batch: TaskBatch, grid: torch.Tensor, truth: torch.Tensor, steps: int, level: float = 0.9
) -> list[dict]:
    """For each task of ``batch`` (1-D inputs): the ensemble adapted for ``steps`` steps, its mixture mean and
    central ``level`` band on ``grid`` (``[G, 1]``), with the true function ``truth`` (``[tasks, G]``): the panels of
    ``figures.plot_posterior_predictive``."""
    likelihood = learner.loss
    if not isinstance(likelihood, GaussianLikelihood):
        raise TypeError("the posterior predictive figure is drawn for a Gaussian likelihood (regression)")
    panels = []
    for task in range(batch.num_tasks):
        support_x, support_y = batch.support_x[task], batch.support_y[task]
        fast = learner.adapt(support_x, support_y, steps=steps)
        with torch.no_grad():
            prediction = fast(grid)
        means, stds = prediction["outputs"], likelihood.stds(prediction)
        tail = (1 - level) / 2
        panels.append(
            {
                "x_grid": grid.reshape(-1),
                "true_y": truth[task].reshape(-1),
                "support_x": support_x.reshape(-1),
                "support_y": support_y.reshape(-1),
                "mean": uncertainty.mixture_mean(means).reshape(-1),
                "lower": uncertainty.gaussian_mixture_quantile(means, stds, tail).reshape(-1),
                "upper": uncertainty.gaussian_mixture_quantile(means, stds, 1 - tail).reshape(-1),
                "title": f"{support_x.shape[0]} examples, {steps} step{'s' if steps != 1 else ''}",
            }
        )
    return panels


def _pooled_ece(bins: torch.Tensor) -> torch.Tensor:
    return uncertainty.expected_calibration_error(bins.sum(0))


def _mean(values: torch.Tensor) -> dict[str, float | int | None]:
    """``{"mean", "ci95"}`` over tasks; both ``None`` with ``diverged_tasks`` where a score is not finite
    (``torchmaml.evaluate.task_mean``)."""
    mean, ci95, diverged = task_mean(values)
    return {"mean": mean, "ci95": ci95} | ({"diverged_tasks": diverged} if diverged else {})


def _cell(estimate: dict[str, float | int | None]) -> str:
    return interval_cell(estimate["mean"], estimate["ci95"], estimate.get("diverged_tasks", 0), digits=4)
