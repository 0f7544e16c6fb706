"""A measured quantity with its standard error, and the normal 95% confidence interval around it.

For ``n`` independent values ``x_1..x_n`` (one per task), ``mean_estimate`` gives the sample mean and its
standard error ``s / sqrt(n)`` (``s`` the unbiased standard deviation); ``Estimate.ci95`` is the half-width
``1.96 s / sqrt(n)`` of the normal-approximation 95% interval that the MAML papers report. The meta-test
(``torchmaml.evaluate``, ``torchmaml.rl.evaluate``) and the theory measurements (``torchmaml.theory``) share
this one type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal


@dataclass(frozen=True)
class Estimate:
    """A measured ``value`` and its estimation ``error`` (a standard error unless documented otherwise)."""

    value: float
    error: float

    @property
    def ci95(self) -> float:
        """The half-width of the normal 95% confidence interval, ``1.96 error``."""
        return Z_95 * self.error

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "error": self.error}


def mean_estimate(values: torch.Tensor) -> Estimate:
    """The sample mean of ``values`` (any shape, as float64) and its standard error (``nan`` for one value)."""
    values = values.detach().double().reshape(-1)
    spread = float(values.std()) if values.numel() > 1 else math.nan
    return Estimate(float(values.mean()), spread / math.sqrt(values.numel()))


__all__ = ["Z_95", "Estimate", "mean_estimate"]
