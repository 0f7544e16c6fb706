"""Sinusoid regression (Finn et al. 2017, section 5.1).

A task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]`` and phase ``phi ~ U[0, pi]``; inputs
``x ~ U[-5, 5]``. Support and query sets are drawn independently from the same task, and so is the
Hessian set ``D_h`` (``hessian_size`` points, when it is not 0) of the estimators that take one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from torchmaml.errors import ConfigError
from torchmaml.tasks import TaskBatch


@dataclass(frozen=True)
class SinusoidTasks:
    """Draws sinusoid tasks with ``support_size`` and ``query_size`` points each, and ``hessian_size`` points of
    an independent Hessian set (``0``: none)."""

    support_size: int = 10
    query_size: int = 10
    hessian_size: int = 0
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("support_size", "query_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hessian_size < 0:
            raise ConfigError(f"hessian_size: must be >= 0, got {self.hessian_size}")

    def sample_functions(self, num_tasks: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases of ``num_tasks`` tasks, each ``[num_tasks]``."""
        amplitude = _uniform(num_tasks, self.amplitude, generator, self.dtype)
        phase = _uniform(num_tasks, self.phase, generator, self.dtype)
        return amplitude, phase

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """A batch of ``num_tasks`` new tasks."""
        amplitude, phase = self.sample_functions(num_tasks, generator)
        batch = self.batch_for(amplitude, phase, self.support_size, self.query_size, generator)
        if not self.hessian_size:
            return batch
        hx = _uniform((num_tasks, self.hessian_size, 1), self.x_range, generator, self.dtype)
        return TaskBatch(**batch.tensors(), hessian_x=hx, hessian_y=self.target(hx, amplitude, phase))

    def batch_for(
        self,
        amplitude: torch.Tensor,
        phase: torch.Tensor,
        support_size: int,
        query_size: int,
        generator: torch.Generator,
    ) -> TaskBatch:
        """Support and query points drawn for the given tasks."""
        num_tasks = amplitude.shape[0]
        sx = _uniform((num_tasks, support_size, 1), self.x_range, generator, self.dtype)
        qx = _uniform((num_tasks, query_size, 1), self.x_range, generator, self.dtype)
        return TaskBatch(sx, self.target(sx, amplitude, phase), qx, self.target(qx, amplitude, phase))

    @staticmethod
    def target(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """``A sin(x - phi)`` for inputs ``x`` of shape ``[B, N, 1]``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))


def _uniform(shape, bounds: tuple[float, float], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    low, high = bounds
    return torch.rand(shape, generator=generator, dtype=dtype) * (high - low) + low
