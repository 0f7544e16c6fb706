"""Inner learning-rate rules: how the step size ``alpha_s`` of inner step ``s`` is obtained.

A rule owns zero or more tensors (learnable rules expose them as meta-parameters, so the outer
optimiser trains them) and maps ``(tensors, step)`` to the step's rate.
"""

from __future__ import annotations

from torch import nn

from torchmaml.functional import Params
from torchmaml.inner import StepLR


class FixedLR(nn.Module):
    """A constant inner learning rate ``alpha`` for every step and parameter (plain MAML)."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = float(lr)

    def rate(self, tensors: Params, step: int) -> StepLR:
        """``alpha``, whatever the step."""
        return self.lr

    def extra_repr(self) -> str:
        return f"lr={self.lr}"
