"""Scores of a particle ensemble's predictions (Bayesian MAML): mixture likelihoods, quantiles, calibration.

An adapted ensemble of ``M`` particles predicts, for one task's query set of ``N`` points, an equally weighted
mixture over particles.

Regression: particle ``m`` predicts ``N(mu_m, sigma_m^2)`` per point (``means [M, N, *event]``, ``stds``
broadcastable to it), so the predictive density and distribution function are

    p(y) = (1/M) sum_m N(y; mu_m, sigma_m^2),    F(y) = (1/M) sum_m Phi((y - mu_m) / sigma_m),

    log N(y; mu, sigma^2) = -(y - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2,

with ``log p`` computed as ``logsumexp_m log N(y; mu_m, sigma_m^2) - log M``. The quantile ``F^{-1}(q)`` is
found by bisection in ``[min_m (mu_m - 10 sigma_m), max_m (mu_m + 10 sigma_m)]`` (``F`` is increasing), and
the mixture's moments follow the law of total variance:

    E[y] = (1/M) sum_m mu_m,    Var[y] = (1/M) sum_m sigma_m^2 + (1/M) sum_m (mu_m - E[y])^2.

Classification: particle ``m`` gives logits ``[M, N, C]``; the predictive distribution is
``p(c) = (1/M) sum_m softmax(logits_m)_c`` and ``log p(c) = logsumexp_m log_softmax(logits_m)_c - log M``.

Calibration (Guo et al., 2017): predictions are grouped into ``B`` equal-width bins of confidence
``max_c p(c)``; with ``n_b`` predictions, ``conf_b`` their summed confidence and ``acc_b`` their summed
correct predictions in bin ``b``, the expected calibration error is ``ECE = sum_b |acc_b - conf_b| / sum_b n_b``.
The bin sums add over tasks, so the ECE of a test set is that of the pooled sums, and its bootstrap interval
resamples tasks (``bootstrap_interval``).

The per-task functions take one task (no task axis): they have no data-dependent Python control flow and no
``.item()``, so ``torch.func.vmap`` maps them over a task axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_mixture_log_density(means: Tensor, stds: Tensor | float, y: Tensor) -> Tensor:
    """``log (1/M) sum_m N(y; mu_m, sigma_m^2)`` per point: ``[N, *event]`` from ``means [M, N, *event]``,
    ``stds`` broadcastable to ``means`` and ``y [N, *event]``."""
    stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
    z = (y - means) / stds
    log_normal = -0.5 * z.square() - torch.log(stds) - HALF_LOG_2PI  # [M, N, *event]
    return torch.logsumexp(log_normal, dim=0) - math.log(means.shape[0])


def gaussian_mixture_nll(means: Tensor, stds: Tensor | float, y: Tensor) -> Tensor:
    """``-mean_{n, event} log p(y_n)``, the mixture's negative log-likelihood per point (and event element)."""
    return -gaussian_mixture_log_density(means, stds, y).mean()


def gaussian_mixture_cdf(means: Tensor, stds: Tensor | float, y: Tensor) -> Tensor:
    """``F(y) = (1/M) sum_m Phi((y - mu_m) / sigma_m)`` per point: ``[N, *event]`` (``y`` broadcastable to
    ``means[0]``); ``Phi`` is ``torch.special.ndtr``, accurate in both tails."""
    stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
    return torch.special.ndtr((y - means) / stds).mean(dim=0)


def gaussian_mixture_quantile(means: Tensor, stds: Tensor | float, q: Tensor | float, iterations: int = 60) -> Tensor:
    """``F^{-1}(q)`` per point, ``[N, *event]``, by ``iterations`` bisection steps in
    ``[min_m (mu_m - 10 sigma_m), max_m (mu_m + 10 sigma_m)]``: the error is at most the bracket's width
    times ``2^-(iterations + 1)`` (60 steps reach float64's resolution; 20 give about 1e-6 of the bracket).

    ``q`` is a number in (0, 1) or a tensor broadcastable to ``means[0]``. A fixed number of steps and
    ``torch.where`` instead of branches, so it runs under ``torch.func.vmap``.
    """
    stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
    q = torch.as_tensor(q, dtype=means.dtype, device=means.device)
    lower = (means - 10 * stds).amin(dim=0)
    upper = (means + 10 * stds).amax(dim=0)
    lower, upper = torch.broadcast_tensors(lower, upper, q)[:2]
    for _ in range(iterations):
        middle = 0.5 * (lower + upper)
        below = gaussian_mixture_cdf(means, stds, middle) < q
        lower = torch.where(below, middle, lower)
        upper = torch.where(below, upper, middle)
    return 0.5 * (lower + upper)


def interval_coverage(means: Tensor, stds: Tensor | float, y: Tensor, level: float = 0.9) -> Tensor:
    """The fraction of points (and event elements) with ``q_{(1-level)/2} <= y <= q_{(1+level)/2}``: inside
    the mixture's central ``level`` interval. A scalar; a calibrated model scores ``level`` on average."""
    low = gaussian_mixture_quantile(means, stds, (1 - level) / 2)
    high = gaussian_mixture_quantile(means, stds, (1 + level) / 2)
    return ((y >= low) & (y <= high)).to(means.dtype).mean()


def mixture_mean(means: Tensor) -> Tensor:
    """``E[y] = (1/M) sum_m mu_m`` per point: ``[N, *event]``."""
    return means.mean(dim=0)


def mixture_variance(means: Tensor, stds: Tensor | float) -> Tensor:
    """``Var[y] = (1/M) sum_m sigma_m^2 + (1/M) sum_m (mu_m - E[y])^2`` per point (law of total variance:
    the particles' mean noise variance plus the population variance of their means): ``[N, *event]``."""
    stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
    noise = torch.broadcast_to(stds.square(), means.shape).mean(dim=0)
    return noise + means.var(dim=0, correction=0)


def mixture_probabilities(logits: Tensor) -> Tensor:
    """``p(c) = (1/M) sum_m softmax(logits_m)_c`` per point: ``[N, C]`` from ``logits [M, N, C]``."""
    return torch.softmax(logits, dim=-1).mean(dim=0)


def categorical_mixture_log_probabilities(logits: Tensor) -> Tensor:
    """``log p(c) = logsumexp_m log_softmax(logits_m)_c - log M`` per point: ``[N, C]``, exact where the
    probabilities underflow."""
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def categorical_mixture_nll(logits: Tensor, y: Tensor) -> Tensor:
    """``-mean_n log p(y_n)`` for the mixture of the particles' softmax predictions (``logits [M, N, C]``,
    integer labels ``y [N]``), from ``categorical_mixture_log_probabilities``: a scalar."""
    log_p = categorical_mixture_log_probabilities(logits)
    return -log_p.gather(-1, y.long().unsqueeze(-1)).mean()


def calibration_bins(probabilities: Tensor, y: Tensor, bins: int = 10) -> Tensor:
    """Per equal-width confidence bin ``[b/B, (b+1)/B)`` (the last one also holds 1.0), ``[3, bins]``: the
    number of points, the sum of their confidences ``max_c p(c)`` and the number whose ``argmax_c p(c)`` is
    ``y``. From ``probabilities [N, C]`` and labels ``y [N]``; the rows add over tasks."""
    confidence, prediction = probabilities.max(dim=-1)
    edges = torch.arange(1, bins, dtype=confidence.dtype, device=confidence.device) / bins
    index = torch.bucketize(confidence, edges, right=True)  # edges[i-1] <= c < edges[i]
    correct = (prediction == y).to(confidence.dtype)
    rows = torch.stack([torch.ones_like(confidence), confidence, correct])  # [3, N]
    zeros = torch.zeros(3, bins, dtype=confidence.dtype, device=confidence.device)
    return zeros.scatter_add(1, index.unsqueeze(0).expand_as(rows), rows)


def expected_calibration_error(stats: Tensor) -> Tensor:
    """``ECE = sum_b |correct_b - confidence_b| / sum_b count_b`` from (pooled) ``calibration_bins`` sums
    ``[3, bins]``: the count-weighted mean gap between accuracy and confidence. NaN when no point was binned."""
    count, confidence, correct = stats
    return (correct - confidence).abs().sum() / count.sum()


def bootstrap_interval(
    per_task: Tensor,
    statistic: Callable[[Tensor], Tensor],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``(statistic(per_task), low, high)``: the statistic on all ``T`` tasks (``per_task [T, ...]``) and the
    percentile bootstrap interval at ``level``, the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the
    statistic over ``resamples`` draws of ``T`` tasks with replacement. The draws come from a
    ``torch.Generator`` seeded with ``seed``, so the interval is a function of the data and the seed.

    For the pooled ECE: ``statistic = lambda s: expected_calibration_error(s.sum(0))``.
    """
    tasks = per_task.shape[0]
    if tasks == 0:
        raise ValueError("bootstrap_interval needs at least one task")
    if resamples < 1:
        raise ValueError(f"bootstrap_interval needs at least one resample, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_interval's level is a probability in (0, 1), got {level}")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(tasks, (resamples, tasks), generator=generator).to(per_task.device)
    values = torch.stack([torch.as_tensor(statistic(per_task[draw])) for draw in draws]).to(torch.float64)
    probabilities = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device=values.device)
    low, high = torch.quantile(values.reshape(resamples), probabilities).tolist()
    return float(statistic(per_task)), low, high
