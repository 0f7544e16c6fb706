"""The unit of data that flows through torchmaml: a batch of tasks stacked on a leading axis.

A task ``i`` has a support set ``(support_x[i], support_y[i])`` used by the inner loop to adapt the
meta-parameters ``w`` into ``w_i``, and a query set ``(query_x[i], query_y[i])`` on which the adapted
parameters are scored. Stacking tasks as ``[B, N, ...]`` tensors lets a whole meta-batch run as one
vectorised call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils._pytree import tree_leaves, tree_map

from torchmaml.errors import TaskBatchError

# A field of a TaskBatch: a tensor, or a tuple/list/dict of tensors (a model with several inputs, a loss with
# several targets); every tensor has the task axis first and the example axis second.
Field = Any


@dataclass(frozen=True)
class TaskBatch:
    """``B`` tasks, each with a support and a query set: tensors of shape ``[B, N, ...]``.

    ``support_x[i]`` holds the ``N_s`` support inputs of task ``i`` and ``support_y[i]`` their targets;
    ``query_x``/``query_y`` likewise hold ``N_q`` query examples. The optional ``hessian_x``/``hessian_y``
    hold an independent batch ``D_h`` for estimators that take the Hessian on its own data
    (``three_batch``). A field may also be a tuple (a model's positional inputs), a dict (keyword inputs) or a
    list of such tensors, each ``[B, N, ...]``. Shapes are checked on construction.
    """

    support_x: Field
    support_y: Field
    query_x: Field
    query_y: Field
    hessian_x: Field | None = None
    hessian_y: Field | None = None

    def __post_init__(self) -> None:
        if (self.hessian_x is None) != (self.hessian_y is None):
            raise TaskBatchError("TaskBatch.hessian_x and hessian_y go together: give both or neither")
        fields = self.tensors()
        for name, value in fields.items():
            leaves = tree_leaves(value)
            if not leaves:
                raise TaskBatchError(f"TaskBatch.{name} holds no tensor")
            for leaf in leaves:
                if not isinstance(leaf, torch.Tensor):
                    raise TaskBatchError(
                        f"TaskBatch.{name} must be a torch.Tensor (or a tuple/dict of them), got {type(leaf).__name__}"
                    )
                if leaf.dim() < 2:
                    raise TaskBatchError(
                        f"TaskBatch.{name} has shape {tuple(leaf.shape)}; it needs a task axis and an example "
                        "axis, [B, N, ...] (use tensor.unsqueeze(0) for a single task)"
                    )
                if 0 in leaf.shape[2:]:
                    raise TaskBatchError(
                        f"TaskBatch.{name} has shape {tuple(leaf.shape)}: its examples are empty (a feature "
                        "dimension of size 0); every example needs at least one value"
                    )
        tasks = {name: {leaf.shape[0] for leaf in tree_leaves(value)} for name, value in fields.items()}
        counts = set().union(*tasks.values())
        if len(counts) != 1:
            shown = {name: sorted(n) if len(n) > 1 else next(iter(n)) for name, n in tasks.items()}
            raise TaskBatchError(f"TaskBatch fields disagree on the number of tasks (dim 0): {shown}")
        if counts == {0}:
            raise TaskBatchError("TaskBatch holds no tasks (dim 0 is 0)")
        for split in ("support", "query", "hessian")[: len(fields) // 2]:
            x, y = (_example_counts(fields[f"{split}_{side}"], f"{split}_{side}") for side in "xy")
            if x != y:
                raise TaskBatchError(
                    f"TaskBatch.{split}_x has {x} examples per task but {split}_y has {y} (dim 1 must match)"
                )
            if x == 0:
                raise TaskBatchError(f"TaskBatch.{split}_x has no examples per task (dim 1 is 0)")
        support_shape = _example_shapes(self.support_x)
        for name in ("query_x", "hessian_x")[: len(fields) // 2 - 1]:
            if _example_shapes(fields[name]) != support_shape:
                raise TaskBatchError(
                    f"support_x examples have shape {_shown(support_shape)} but {name} examples have shape "
                    f"{_shown(_example_shapes(fields[name]))}; they must match"
                )
        devices = {leaf.device for value in fields.values() for leaf in tree_leaves(value)}
        if len(devices) != 1:
            raise TaskBatchError(f"TaskBatch fields are on different devices: {sorted(map(str, devices))}")

    @property
    def num_tasks(self) -> int:
        """The number of tasks ``B``."""
        return tree_leaves(self.support_x)[0].shape[0]

    @property
    def device(self) -> torch.device:
        """The device every tensor of the batch is on."""
        return tree_leaves(self.support_x)[0].device

    def to(self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TaskBatch:
        """Every field moved to ``device``; floating-point fields cast to ``dtype`` (integer labels keep theirs)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return TaskBatch(**tree_map(move, self.tensors()))

    def tensors(self) -> dict[str, Field]:
        """The fields that are present, by name (the optional Hessian set only when given)."""
        names = ("support_x", "support_y", "query_x", "query_y", "hessian_x", "hessian_y")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start:stop`` as a new batch."""
        return TaskBatch(**tree_map(lambda t: t[start:stop], self.tensors()))

    def select(self, indices: torch.Tensor) -> TaskBatch:
        """The tasks at ``indices`` (a 1-D integer tensor), in that order, as a new batch."""
        return TaskBatch(**tree_map(lambda t: t[indices.to(t.device)], self.tensors()))

    def chunks(self, size: int) -> Iterator[TaskBatch]:
        """Consecutive sub-batches of at most ``size`` tasks."""
        for start in range(0, self.num_tasks, size):
            yield self.slice(start, min(start + size, self.num_tasks))


def _example_counts(field: Field, name: str) -> int:
    counts = {leaf.shape[1] for leaf in tree_leaves(field)}
    if len(counts) != 1:
        raise TaskBatchError(f"TaskBatch.{name}'s tensors disagree on the number of examples (dim 1): {sorted(counts)}")
    return counts.pop()


def _example_shapes(field: Field) -> list[tuple[int, ...]]:
    return [tuple(leaf.shape[2:]) for leaf in tree_leaves(field)]


def _shown(shapes: list[tuple[int, ...]]) -> str:
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


class TaskSource(Protocol):
    """Anything that draws batches of tasks: ``sample(num_tasks, generator) -> TaskBatch``."""

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch: ...


class TaskPool:
    """A finite set of ``count`` tasks drawn once from ``source`` (with ``generator``), each with its examples
    fixed; ``sample`` draws meta-batches from it. Meta-training on a pool is the finite-task setting of the
    Bayesian MAML paper (``|T|`` training tasks), where a meta-learner can overfit the tasks it has seen.

    A meta-batch of ``B <= count`` tasks holds ``B`` distinct tasks of the pool (a uniform random subset, in
    random order); a larger one draws the pool's tasks with replacement.
    """

    def __init__(self, source: TaskSource, count: int, generator: torch.Generator) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise TaskBatchError(f"TaskPool: count must be an integer >= 1, got {count!r}")
        self.count = count
        self.tasks = source.sample(count, generator)

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """``num_tasks`` tasks of the pool (class docstring)."""
        if num_tasks <= self.count:
            indices = torch.randperm(self.count, generator=generator)[:num_tasks]
        else:
            indices = torch.randint(self.count, (num_tasks,), generator=generator)
        return self.tasks.select(indices)
