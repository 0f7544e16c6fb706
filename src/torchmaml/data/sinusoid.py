"""Sinusoid regression (Finn et al. 2017, section 5.1).

A task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]`` and phase ``phi ~ U[0, pi]``; inputs
``x ~ U[-5, 5]``. Support and query sets are drawn independently from the same task, and so is the
Hessian set ``D_h`` (``hessian_size`` points, when it is not 0) of the estimators that take one.

The Bayesian MAML paper's setting (Kim, Yoon et al. 2018) widens the family to ``y = A sin(omega x - phi) + eps``
with ``omega ~ U[0.5, 2]``, ``phi ~ U[0, 2 pi]`` and observation noise ``eps ~ N(0, (noise A)^2)``, ``noise = 0.01``
(``frequency``, ``phase``, ``noise``). A fixed frequency and no noise draw nothing from the generator, so the
paper-MAML setting samples exactly the same tasks as before these options existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from torchmaml.errors import ConfigError
from torchmaml.tasks import TaskBatch


class SinusoidFunctions(NamedTuple):
    """The functions of a batch of tasks, each field ``[num_tasks]``."""

    amplitude: torch.Tensor
    phase: torch.Tensor
    frequency: torch.Tensor


@dataclass(frozen=True)
class SinusoidTasks:
    """Draws sinusoid tasks with ``support_size`` and ``query_size`` points each, and ``hessian_size`` points of
    an independent Hessian set (``0``: none); observations carry noise of standard deviation ``noise * A``."""

    support_size: int = 10
    query_size: int = 10
    hessian_size: int = 0
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    frequency: tuple[float, float] = (1.0, 1.0)
    noise: float = 0.0
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("support_size", "query_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hessian_size < 0:
            raise ConfigError(f"hessian_size: must be >= 0, got {self.hessian_size}")
        if self.noise < 0:
            raise ConfigError(f"noise: must be >= 0, got {self.noise}")

    def sample_functions(self, num_tasks: int, generator: torch.Generator) -> SinusoidFunctions:
        """Amplitudes, phases and frequencies of ``num_tasks`` tasks (a fixed frequency draws nothing)."""
        amplitude = _uniform(num_tasks, self.amplitude, generator, self.dtype)
        phase = _uniform(num_tasks, self.phase, generator, self.dtype)
        low, high = self.frequency
        if low == high:
            frequency = torch.full((num_tasks,), low, dtype=self.dtype)
        else:
            frequency = _uniform(num_tasks, self.frequency, generator, self.dtype)
        return SinusoidFunctions(amplitude, phase, frequency)

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """A batch of ``num_tasks`` new tasks."""
        functions = self.sample_functions(num_tasks, generator)
        batch = self.batch_for(functions, self.support_size, self.query_size, generator)
        if not self.hessian_size:
            return batch
        hx = _uniform((num_tasks, self.hessian_size, 1), self.x_range, generator, self.dtype)
        return TaskBatch(**batch.tensors(), hessian_x=hx, hessian_y=self.observe(hx, functions, generator))

    def batch_for(
        self, functions: SinusoidFunctions, support_size: int, query_size: int, generator: torch.Generator
    ) -> TaskBatch:
        """Support and query points drawn for the given tasks."""
        num_tasks = functions.amplitude.shape[0]
        sx = _uniform((num_tasks, support_size, 1), self.x_range, generator, self.dtype)
        qx = _uniform((num_tasks, query_size, 1), self.x_range, generator, self.dtype)
        return TaskBatch(sx, self.observe(sx, functions, generator), qx, self.observe(qx, functions, generator))

    def observe(self, x: torch.Tensor, functions: SinusoidFunctions, generator: torch.Generator) -> torch.Tensor:
        """Observations at ``x`` (``[B, N, 1]``): the functions' values plus ``N(0, (noise A)^2)`` noise."""
        y = self.target(x, functions.amplitude, functions.phase, functions.frequency)
        if not self.noise:
            return y
        scale = self.noise * functions.amplitude.view(-1, 1, 1)
        return y + scale * torch.randn(y.shape, generator=generator, dtype=self.dtype)

    @staticmethod
    def target(
        x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor, frequency: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``A sin(omega x - phi)`` for inputs ``x`` of shape ``[B, N, 1]`` (``omega = 1`` when not given)."""
        if frequency is not None:
            x = frequency.view(-1, 1, 1) * x
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))


def _uniform(shape, bounds: tuple[float, float], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    low, high = bounds
    return torch.rand(shape, generator=generator, dtype=dtype) * (high - low) + low
