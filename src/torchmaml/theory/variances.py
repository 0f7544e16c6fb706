"""The variance constants of MAML's analysis and the optimality gap, by Monte Carlo over tasks and examples.

For a batch of ``m`` tasks with ``n`` support examples each (take ``n`` large: the support set stands in for the
task's population), with ``g_ij = grad l(w; x_ij, y_ij)`` and ``H_ij`` the per-example Hessians:

- per-example gradient variance ``sigmã^2 = E_i E_j ||g_ij - grad f_i(w)||^2``: per task the unbiased sample
  variance ``s_i^2 = sum_j ||g_ij - gbar_i||^2 / (n - 1)``, averaged over tasks;
- per-example Hessian variance ``sigma_H^2 = E_i E_j ||H_ij - grad^2 f_i(w)||_F^2``, Hutchinson-style: for
  Rademacher ``v``, ``E_v ||(H_ij - H_i) v||^2 = ||H_ij - H_i||_F^2``, so per task the sample variance of the
  per-example products ``H_ij v`` averaged over ``v`` (the Frobenius norm bounds the spectral one used by the
  analysis from above);
- task-gradient variance ``sigma^2 = E_i ||grad f_i(w) - grad f(w)||^2``: the task means ``gbar_i`` carry sampling
  noise of variance ``s_i^2 / n``, so ``sigma^2 = sum_i ||gbar_i - gbar||^2 / (m - 1) - mean_i s_i^2 / n``;
- the meta-loss ``F(w)``: the mean query loss after adaptation (the optimality gap ``Delta = F(w) - F_best``
  subtracts a lower bound on ``inf F`` or the best meta-loss found).

Each comes with its standard error over tasks (the jackknife for ``sigma^2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchmaml.execution import map_tasks
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch
from torchmaml.theory.gradients import example_gradients, example_hessian_products
from torchmaml.theory.statistics import Estimate, jackknife, mean_estimate


@dataclass(frozen=True)
class SampleStatistics:
    """Per task: the support mean gradient ``gbar_i`` (``[m, P]``), the per-example gradient variance ``s_i^2`` and
    the Hutchinson per-example Hessian variance (``[m]`` each), on ``n`` support examples."""

    mean_gradients: torch.Tensor
    gradient_variances: torch.Tensor
    hessian_variances: torch.Tensor
    examples: int


@torch.no_grad()
def sample_statistics(
    learner: MetaLearner, batch: TaskBatch, vectors: int = 8, seed: int = 0, chunk_size: int = 10
) -> SampleStatistics:
    """The per-task statistics of the support sets of ``batch`` at the learner's point, with ``vectors``
    Rademacher probes for the Hessian variance (the same probes for every task), ``chunk_size`` tasks at a time."""
    params = learner.functional.parameters()
    generator = torch.Generator().manual_seed(seed)
    probes = [
        {n: (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for n, p in params.items()}
        for _ in range(vectors)
    ]

    def per_task(task):
        x, y = task["support_x"], task["support_y"]
        gradients = example_gradients(learner, params, x, y)
        hessian = torch.stack(
            [_sample_variance(example_hessian_products(learner, params, x, y, v)) for v in probes]
        ).mean()
        return torch.cat([gradients.mean(0), torch.stack([_sample_variance(gradients), hessian])])

    rows = torch.cat([map_tasks(per_task, chunk, learner.strategy) for chunk in batch.chunks(chunk_size)]).double()
    return SampleStatistics(rows[:, :-2], rows[:, -2], rows[:, -1], batch.support_x.shape[1])


def _sample_variance(rows: torch.Tensor) -> torch.Tensor:
    """``sum_j ||r_j - mean r||^2 / (n - 1)`` over the rows of ``[n, P]``."""
    return (rows - rows.mean(0)).square().sum() / (rows.shape[0] - 1)


def sample_gradient_variance(stats: SampleStatistics) -> Estimate:
    """``sigmã^2``: the mean over tasks of the per-example gradient variance, with its standard error."""
    return mean_estimate(stats.gradient_variances)


def sample_hessian_variance(stats: SampleStatistics) -> Estimate:
    """``sigma_H^2`` (Frobenius, Hutchinson): the mean over tasks, with its standard error."""
    return mean_estimate(stats.hessian_variances)


def task_gradient_variance(stats: SampleStatistics) -> Estimate:
    """``sigma^2``: the spread of the task means corrected for their sampling noise, jackknife standard error."""

    def statistic(rows: torch.Tensor) -> torch.Tensor:
        means = stats.mean_gradients[rows]
        spread = (means - means.mean(0)).square().sum() / (rows.numel() - 1)
        return spread - stats.gradient_variances[rows].mean() / stats.examples

    return jackknife(statistic, stats.mean_gradients.shape[0])


@torch.no_grad()
def meta_loss(learner: MetaLearner, batch: TaskBatch) -> Estimate:
    """``F(w)``: the query loss after the learner's inner steps, mean over the tasks of ``batch`` ± its error."""
    return mean_estimate(learner.query_losses(batch, learner.inner_steps)[:, -1])
