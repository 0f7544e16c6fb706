"""Task families whose meta-gradient ``grad F(w)`` can be computed to high accuracy: the theory lab's ground truth.

A ``ReferenceFamily`` is a ``TaskSource`` (``sample(num_tasks, generator) -> TaskBatch`` with its own
support size ``D_in``, query size ``D_o`` and Hessian-batch size ``D_h``) that also exposes

- ``sample_tasks(num_tasks, generator)``: the task parameters ``[B, p]`` (one row per task);
- ``batch_for(tasks, support_size, query_size, hessian_size, generator)``: data drawn for given tasks;
- ``population_batch(tasks)``: for each task a data set whose empirical loss is the task's population loss
  ``f_i`` (exactly, or to quadrature accuracy), as both support and query set, so that the exact
  (``unrolled``) meta-gradient on it is ``grad F_i(w) = grad_w f_i(w - alpha grad f_i(w))``;
- ``quadrature()``: task parameters and weights (summing to 1) with ``sum_q weight_q g(task_q) = E_i g(task_i)``
  for the integrands of the analysis, so ``grad F(w) = sum_q weight_q grad F_q(w)``;
- ``model(seed)``: the network the lab meta-trains on this family (float64).

``torchmaml.theory.reference`` turns these into ``F(w)`` and ``grad F(w)`` for any ``MetaLearner``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from torchmaml.tasks import TaskBatch


class ReferenceFamily(Protocol):
    """A task family with population data sets and a quadrature rule over tasks (see the module docstring)."""

    support_size: int
    query_size: int
    hessian_size: int

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch: ...

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor: ...

    def batch_for(
        self, tasks: torch.Tensor, support_size: int, query_size: int, hessian_size: int, generator: torch.Generator
    ) -> TaskBatch: ...

    def population_batch(self, tasks: torch.Tensor) -> TaskBatch: ...

    def quadrature(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def model(self, seed: int = 0) -> nn.Module: ...
