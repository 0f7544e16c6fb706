"""Execution strategies: how a per-task estimator runs over a batch of ``B`` tasks.

All strategies compute the same average ``G = (1/B) sum_i G_i`` (and averaged metrics):

- ``"vmap"``: one vectorised call over the task axis (``torch.func.vmap``). Fastest for small models
  (the sinusoid MLP), but its memory is ``B`` times one task's.
- ``"chunked"``: ``vmap`` over ``chunk_size`` tasks at a time; memory is ``chunk_size`` tasks'.
- ``"loop"``: one task at a time, gradients accumulated; memory is one task's. Fastest for conv nets on
  CPU, and the only correct choice for fused ``nn.BatchNorm`` layers, whose batching rule gives wrong
  second-order gradients under ``vmap`` (functorch#534).
- ``"auto"``: ``"loop"`` for models with convolutions, fused batch norm or recurrent layers, ``"vmap"``
  otherwise (chosen from the measurements in ``benchmarks/speed.py``).

Each strategy creates the execution context its tasks run in (``torchmaml.context``): vectorised for ``vmap``
and ``chunked``, one task at a time for ``loop``, and gives it to the estimator in the ``InnerProblem``.

Under ``vmap`` random operations (dropout) draw independent randomness for every task
(``randomness="different"``); under ``loop`` they draw from torch's generator one task after another. Either
way every forward pass (each inner step, the query pass) draws fresh randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import vmap
from torch.utils._pytree import tree_map

from torchmaml.context import ONE_TASK_AT_A_TIME, VECTORISED, ExecutionContext
from torchmaml.errors import ConfigError, ModelError
from torchmaml.estimators.base import InnerProblem, MetaParams, Metrics, Task, TaskGradient
from torchmaml.functional import FunctionalModel
from torchmaml.tasks import TaskBatch

Strategy = Literal["auto", "vmap", "chunked", "loop"]
STRATEGIES = ("auto", "vmap", "chunked", "loop")


def resolve_strategy(strategy: str, model: FunctionalModel) -> str:
    """Turn ``"auto"`` into a concrete strategy for ``model``; refuse combinations that would be wrong."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "loop" if model.has_fused_batch_norm or model.has_convolution or model.has_recurrent else "vmap"
    if strategy in ("vmap", "chunked") and model.has_fused_batch_norm:
        raise ModelError(
            f"strategy {strategy!r}: the model has a fused nn.BatchNorm layer, whose vmap batching rule gives "
            "wrong second-order gradients; use strategy='loop' (or 'auto'), or torchmaml.models.MetaBatchNorm2d"
        )
    if strategy in ("vmap", "chunked") and model.has_recurrent:
        raise ModelError(
            f"strategy {strategy!r}: the model has a recurrent layer (nn.RNN/GRU/LSTM), whose torch kernels cannot "
            "run vectorised over tasks; use strategy='loop' (or 'auto')"
        )
    return strategy


def apply_task_gradient(
    task_gradient: TaskGradient, problem: InnerProblem, meta: MetaParams, task: Task
) -> tuple[MetaParams, Metrics]:
    """``G_i`` and the metrics of one task: ``task_gradient(problem, meta, task)``. The ``"loop"`` strategy calls
    it once per task; ``torch.compile`` of it compiles one task's whole meta-gradient."""
    return task_gradient(problem, meta, task)


def mean_task_gradient(
    task_gradient: TaskGradient,
    problem: InnerProblem,
    meta: MetaParams,
    batch: TaskBatch,
    strategy: str,
    chunk_size: int | None = None,
    per_task: Callable[..., tuple[MetaParams, Metrics]] = apply_task_gradient,
) -> tuple[MetaParams, Metrics]:
    """``(1/B) sum_i G_i`` and the averaged metrics, with ``strategy`` one of vmap, chunked, loop; the loop
    computes each ``G_i`` with ``per_task`` (``apply_task_gradient`` or a compiled version of it)."""
    if strategy == "loop":
        return _loop(per_task, task_gradient, problem, meta, batch)
    if strategy == "chunked" and not chunk_size:
        raise ConfigError("chunk_size: strategy 'chunked' needs a positive chunk_size")
    problem = problem.in_context(VECTORISED)
    batched = vmap(
        lambda m, task: task_gradient(problem, m, task),
        in_dims=(None, 0),
        chunk_size=chunk_size if strategy == "chunked" else None,
        randomness="different",
    )
    grads, metrics = batched(meta, batch.tensors())
    return tree_map(lambda t: t.mean(0), (grads, metrics))


def _loop(
    per_task: Callable[..., tuple[MetaParams, Metrics]],
    task_gradient: TaskGradient,
    problem: InnerProblem,
    meta: MetaParams,
    batch: TaskBatch,
) -> tuple[MetaParams, Metrics]:
    total: tuple[MetaParams, Metrics] | None = None
    problem = problem.in_context(ONE_TASK_AT_A_TIME)
    for i in range(batch.num_tasks):
        result = per_task(task_gradient, problem, meta, task_at(batch, i))
        total = result if total is None else tree_map(torch.add, total, result)
    return tree_map(lambda t: t / batch.num_tasks, total)


def map_tasks(
    fn: Callable[[Task], torch.Tensor], batch: TaskBatch, strategy: str, chunk_size: int | None = None
) -> torch.Tensor:
    """``torch.stack([fn(task_i) for each task])``, run with ``strategy``; ``fn`` returns a tensor and evaluates
    models in the default context (correct under every strategy)."""
    return map_tasks_in_context(lambda task, _context: fn(task), batch, strategy, chunk_size)


def map_tasks_in_context(
    fn: Callable[[Task, ExecutionContext], torch.Tensor],
    batch: TaskBatch,
    strategy: str,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``torch.stack([fn(task_i, context) for each task])``, run with ``strategy``, which gives ``fn`` the
    execution context to evaluate models in; ``fn`` returns a tensor."""
    if strategy == "loop":
        return torch.stack([fn(task_at(batch, i), ONE_TASK_AT_A_TIME) for i in range(batch.num_tasks)])
    chunks = chunk_size if strategy == "chunked" else None
    return vmap(lambda task: fn(task, VECTORISED), chunk_size=chunks, randomness="different")(batch.tensors())


def task_at(batch: TaskBatch, index: int) -> Task:
    """Task ``index`` of ``batch`` as a ``Task`` dictionary (no task axis; inputs may be pytrees)."""
    return tree_map(lambda t: t[index], batch.tensors())
