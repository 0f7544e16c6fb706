"""Sinusoid regression (Finn et al. 2017) as a ``ReferenceFamily``: population sets and a quadrature over tasks.

Tasks ``y = A sin(x - phi)``, ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``, ``x ~ U[-5, 5]``
(``torchmaml.data.SinusoidTasks``).

- Population set of a task: the ``grid`` midpoints ``x_j = -5 + (j + 1/2) 10 / grid``; its empirical loss is the
  midpoint rule for ``f_i(w) = E_x l(w; x, y)``, accurate to ``O(grid^-2)`` for a smooth network.
- Quadrature over tasks: Gauss-Legendre with ``nodes`` points in ``A`` and in ``phi`` (``nodes^2`` tasks), exact
  for polynomials of degree ``2 nodes - 1`` in each and spectrally accurate for smooth integrands.

The model is the paper's 1-40-40-1 MLP with ``tanh`` instead of ReLU: the analysis assumes twice
differentiable losses with Lipschitz Hessians, which a ReLU network does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.errors import ConfigError
from torchmaml.tasks import TaskBatch


@dataclass(frozen=True)
class SinusoidFamily:
    """Sinusoid tasks (task parameters: rows ``(A, phi)``) with support, query and Hessian sets of the given sizes."""

    support_size: int = 10
    query_size: int = 10
    hessian_size: int = 0
    grid: int = 200
    nodes: int = 12
    tasks: SinusoidTasks = field(default_factory=lambda: SinusoidTasks(dtype=torch.float64))

    def __post_init__(self) -> None:
        for name in ("support_size", "query_size", "grid", "nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hessian_size < 0:
            raise ConfigError(f"hessian_size: must be >= 0, got {self.hessian_size}")

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """``[num_tasks, 2]``: amplitude and phase of each task."""
        return torch.stack(self.tasks.sample_functions(num_tasks, generator)[:2], dim=1)

    def batch_for(
        self, tasks: torch.Tensor, support_size: int, query_size: int, hessian_size: int, generator: torch.Generator
    ) -> TaskBatch:
        """Independent uniform inputs for the support, query and (when ``hessian_size > 0``) Hessian sets."""
        low, high = self.tasks.x_range
        sets = []
        for size in (support_size, query_size, hessian_size) if hessian_size > 0 else (support_size, query_size):
            x = torch.rand(tasks.shape[0], size, 1, generator=generator, dtype=self.tasks.dtype) * (high - low) + low
            sets += [x, self.tasks.target(x, tasks[:, 0], tasks[:, 1])]
        return TaskBatch(*sets)

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """``num_tasks`` new tasks with this family's ``D_in``, ``D_o`` and ``D_h``."""
        tasks = self.sample_tasks(num_tasks, generator)
        return self.batch_for(tasks, self.support_size, self.query_size, self.hessian_size, generator)

    def population_batch(self, tasks: torch.Tensor) -> TaskBatch:
        """The midpoint grid of ``grid`` inputs for every task, as support and query set."""
        low, high = self.tasks.x_range
        x = low + (torch.arange(self.grid, dtype=self.tasks.dtype) + 0.5) * (high - low) / self.grid
        x = x.view(1, -1, 1).expand(tasks.shape[0], -1, -1)
        y = self.tasks.target(x, tasks[:, 0], tasks[:, 1])
        return TaskBatch(x, y, x, y)

    def quadrature(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss-Legendre nodes over amplitude x phase, weights normalised to sum to 1."""
        points, weights = np.polynomial.legendre.leggauss(self.nodes)
        (a_low, a_high), (p_low, p_high) = self.tasks.amplitude, self.tasks.phase
        amplitude = torch.tensor(a_low + (points + 1) * (a_high - a_low) / 2, dtype=self.tasks.dtype)
        phase = torch.tensor(p_low + (points + 1) * (p_high - p_low) / 2, dtype=self.tasks.dtype)
        grid_a, grid_p = torch.meshgrid(amplitude, phase, indexing="ij")
        w = torch.tensor(weights / 2, dtype=self.tasks.dtype)
        return torch.stack([grid_a.reshape(-1), grid_p.reshape(-1)], 1), torch.outer(w, w).reshape(-1)

    def model(self, seed: int = 0) -> nn.Module:
        """The 1-40-40-1 ``tanh`` MLP in float64, initialised from ``seed``."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(1, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 1)).double()
