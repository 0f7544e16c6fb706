"""The unit of data that flows through torchmaml: a batch of tasks stacked on a leading axis.

A task ``i`` has a support set ``(support_x[i], support_y[i])`` used by the inner loop to adapt the
meta-parameters ``w`` into ``w_i``, and a query set ``(query_x[i], query_y[i])`` on which the adapted
parameters are scored. Stacking tasks as ``[B, N, ...]`` tensors lets a whole meta-batch run as one
vectorised call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from torchmaml.errors import TaskBatchError


@dataclass(frozen=True)
class TaskBatch:
    """``B`` tasks, each with a support and a query set: tensors of shape ``[B, N, ...]``.

    ``support_x[i]`` holds the ``N_s`` support inputs of task ``i`` and ``support_y[i]`` their targets;
    ``query_x``/``query_y`` likewise hold ``N_q`` query examples. The optional ``hessian_x``/``hessian_y``
    hold an independent batch ``D_h`` for estimators that take the Hessian on its own data
    (``three_batch``). Shapes are checked on construction.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    hessian_x: torch.Tensor | None = None
    hessian_y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.hessian_x is None) != (self.hessian_y is None):
            raise TaskBatchError("TaskBatch.hessian_x and hessian_y go together: give both or neither")
        fields = self.tensors()
        for name, value in fields.items():
            if not isinstance(value, torch.Tensor):
                raise TaskBatchError(f"TaskBatch.{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() < 2:
                raise TaskBatchError(
                    f"TaskBatch.{name} has shape {tuple(value.shape)}; it needs a task axis and an example "
                    "axis, [B, N, ...] (use tensor.unsqueeze(0) for a single task)"
                )
        tasks = {name: value.shape[0] for name, value in fields.items()}
        if len(set(tasks.values())) != 1:
            raise TaskBatchError(f"TaskBatch fields disagree on the number of tasks (dim 0): {tasks}")
        if tasks["support_x"] == 0:
            raise TaskBatchError("TaskBatch holds no tasks (dim 0 is 0)")
        for split in ("support", "query", "hessian")[: len(fields) // 2]:
            x, y = fields[f"{split}_x"], fields[f"{split}_y"]
            if x.shape[1] != y.shape[1]:
                raise TaskBatchError(
                    f"TaskBatch.{split}_x has {x.shape[1]} examples per task but {split}_y has {y.shape[1]} "
                    "(dim 1 must match)"
                )
            if x.shape[1] == 0:
                raise TaskBatchError(f"TaskBatch.{split}_x has no examples per task (dim 1 is 0)")
        for name in ("query_x", "hessian_x")[: len(fields) // 2 - 1]:
            if self.support_x.shape[2:] != fields[name].shape[2:]:
                raise TaskBatchError(
                    f"support_x examples have shape {tuple(self.support_x.shape[2:])} but {name} examples "
                    f"have shape {tuple(fields[name].shape[2:])}; they must match"
                )
        devices = {value.device for value in fields.values()}
        if len(devices) != 1:
            raise TaskBatchError(f"TaskBatch fields are on different devices: {sorted(map(str, devices))}")

    @property
    def num_tasks(self) -> int:
        """The number of tasks ``B``."""
        return self.support_x.shape[0]

    def to(self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TaskBatch:
        """Every field moved to ``device``; floating-point fields cast to ``dtype`` (integer labels keep theirs)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return TaskBatch(**{name: move(t) for name, t in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields that are present, by name (the optional Hessian set only when given)."""
        names = ("support_x", "support_y", "query_x", "query_y", "hessian_x", "hessian_y")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start:stop`` as a new batch."""
        return TaskBatch(**{name: t[start:stop] for name, t in self.tensors().items()})

    def chunks(self, size: int) -> Iterator[TaskBatch]:
        """Consecutive sub-batches of at most ``size`` tasks."""
        for start in range(0, self.num_tasks, size):
            yield self.slice(start, min(start + size, self.num_tasks))


class TaskSource(Protocol):
    """Anything that draws batches of tasks: ``sample(num_tasks, generator) -> TaskBatch``."""

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch: ...
