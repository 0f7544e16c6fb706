"""Small statistics for Monte Carlo estimates: a value with its standard error, the jackknife, log-log fits.

- ``mean_estimate(x)``: ``mean(x) ± std(x) / sqrt(n)`` (with ``Estimate``, from ``torchmaml.statistics``);
- ``jackknife(statistic, n)``: for a statistic of ``n`` independent units (tasks), the leave-one-out values
  ``t_(i)`` give ``se^2 = (n - 1)/n sum_i (t_(i) - mean t_(.))^2``;
- ``bootstrap_max(x)``: the maximum and the bootstrap standard error of a maximum over tasks;
- ``power_law_fit(x, y)``: ``log y = a + b log x`` by least squares, the slope ``b`` with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from torchmaml.statistics import Estimate, mean_estimate


def jackknife(statistic: Callable[[torch.Tensor], torch.Tensor], n: int) -> Estimate:
    """``statistic(indices)`` on all ``n`` units, with the jackknife standard error from the ``n`` leave-one-out
    values (``statistic`` takes a tensor of unit indices)."""
    everything = torch.arange(n)
    leave_one_out = torch.stack([statistic(everything[everything != i]) for i in range(n)]).double()
    error = math.sqrt((n - 1) / n * float((leave_one_out - leave_one_out.mean()).square().sum()))
    return Estimate(float(statistic(everything)), error)


def bootstrap_max(values: torch.Tensor, resamples: int = 200, seed: int = 0) -> Estimate:
    """``max(values)`` and the standard deviation of the maximum over bootstrap resamples of the values."""
    values = values.double().reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(values.numel(), (resamples, values.numel()), generator=generator)
    return Estimate(float(values.max()), float(values[picks].amax(1).std()))


def power_law_fit(x: list[float], y: list[float]) -> Estimate:
    """The slope ``b`` of ``log y = a + b log x`` by least squares, and its standard error (``nan`` with two
    points); points with ``y <= 0`` are left out."""
    pairs = [(math.log(a), math.log(b)) for a, b in zip(x, y, strict=True) if b > 0]
    if len(pairs) < 2:
        return Estimate(math.nan, math.nan)
    lx, ly = torch.tensor(pairs, dtype=torch.float64).T
    centred = lx - lx.mean()
    slope = float((centred * (ly - ly.mean())).sum() / centred.square().sum())
    if len(pairs) == 2:
        return Estimate(slope, math.nan)
    residual = ly - ly.mean() - slope * centred
    error = math.sqrt(float(residual.square().sum()) / (len(pairs) - 2) / float(centred.square().sum()))
    return Estimate(slope, error)


__all__ = ["Estimate", "bootstrap_max", "jackknife", "mean_estimate", "power_law_fit"]
