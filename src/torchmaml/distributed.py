"""Data parallel meta-learning over tasks with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Each of ``R`` processes (ranks) holds a share of a task batch: rank ``r`` computes the mean meta-gradient
``G_r`` of its ``n_r`` tasks, and one all-reduce gives every rank the mean over the whole batch,

    G = (1 / B) sum_r n_r G_r,        B = sum_r n_r,

which is ``(1/B) sum_i G_i``, the one-process meta-gradient, whatever the shares (uneven ones included). The
task counts travel in the same all-reduce as the gradients, so a rank need not know the others' shares.
Tensors are packed into flat buckets of at most ``BUCKET_BYTES`` per dtype and device, one collective per
bucket (as ``DistributedDataParallel`` does).

    import torch.distributed as dist
    dist.init_process_group("gloo")                            # e.g. under torchrun
    learner = MetaLearner(model, F.mse_loss, process_group=dist.group.WORLD)
    batch = source.sample(32, generator)                       # the same global batch on every rank
    learner.backward(shard(batch))                             # this rank's tasks; .grad = G on every rank

``shard`` gives rank ``r`` the consecutive tasks ``task_range(B, r, R)``, so the ranks' shares in rank order
are the global batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_flatten, tree_unflatten

from torchmaml.errors import ConfigError
from torchmaml.tasks import TaskBatch

BUCKET_BYTES = 25 * 2**20
ProcessGroup = dist.ProcessGroup


def rank_and_size(group: ProcessGroup | None = None) -> tuple[int, int]:
    """This process's rank and the group's size; ``(0, 1)`` without an initialised process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def task_range(tasks: int, rank: int, size: int) -> range:
    """Rank ``rank``'s tasks of ``tasks``: consecutive, shares differing by at most one (the first
    ``tasks % size`` ranks hold one more)."""
    if tasks < size:
        raise ConfigError(
            f"meta_batch_size: {tasks} tasks cannot be shared by {size} processes; use at least {size} tasks "
            "per meta-batch or fewer processes"
        )
    share, extra = divmod(tasks, size)
    start = rank * share + min(rank, extra)
    return range(start, start + share + (rank < extra))


def shard(batch: TaskBatch, group: ProcessGroup | None = None) -> TaskBatch:
    """This rank's share of ``batch`` (``task_range``); the whole batch without a process group."""
    rank, size = rank_and_size(group)
    if size == 1:
        return batch
    tasks = task_range(batch.num_tasks, rank, size)
    return batch.slice(tasks.start, tasks.stop)


def gather_tasks(values: torch.Tensor, group: ProcessGroup | None = None) -> torch.Tensor:
    """Every rank's per-task ``values`` (a vector over its share) joined in rank order: with ``shard``'s
    shares, the vector one process computes over the whole batch."""
    size = rank_and_size(group)[1]
    if size == 1:
        return values
    gathered: list[torch.Tensor | None] = [None] * size
    dist.all_gather_object(gathered, values.detach().cpu(), group=group)
    return torch.cat(gathered).to(values.device)


def task_mean(tree, tasks: int, group: ProcessGroup | None = None, bucket_bytes: int = BUCKET_BYTES):
    """``tree`` (a pytree of tensors: this rank's means over its ``tasks`` tasks) as the mean over every
    rank's tasks, ``sum_r n_r x_r / sum_r n_r``, identical on every rank. Same structure, new tensors."""
    leaves, spec = tree_flatten(tree)
    total = torch.tensor(float(tasks), dtype=torch.float64)
    reduced = _all_reduce_sums([leaf.detach() * tasks for leaf in leaves] + [total], group, bucket_bytes)
    count = reduced.pop()
    return tree_unflatten([leaf / count.to(leaf.dtype) for leaf in reduced], spec)


def _all_reduce_sums(tensors: Sequence[torch.Tensor], group: ProcessGroup | None, bucket_bytes: int):
    """The element-wise sums of ``tensors`` over the ranks, in buckets of one dtype and device."""
    kinds: dict[tuple[torch.dtype, torch.device], list[int]] = defaultdict(list)
    for index, tensor in enumerate(tensors):
        kinds[(tensor.dtype, tensor.device)].append(index)
    summed: list[torch.Tensor | None] = [None] * len(tensors)
    for indices in kinds.values():
        for bucket in _buckets(indices, tensors, bucket_bytes):
            flat = torch.cat([tensors[i].reshape(-1) for i in bucket])
            dist.all_reduce(flat, group=group)
            parts = flat.split([tensors[i].numel() for i in bucket])
            for i, part in zip(bucket, parts, strict=True):
                summed[i] = part.view_as(tensors[i])
    return summed


def _buckets(indices: list[int], tensors: Sequence[torch.Tensor], limit: int) -> list[list[int]]:
    buckets: list[list[int]] = [[]]
    size = 0
    for i in indices:
        nbytes = tensors[i].numel() * tensors[i].element_size()
        if buckets[-1] and size + nbytes > limit:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += nbytes
    return buckets


__all__ = ["BUCKET_BYTES", "gather_tasks", "rank_and_size", "shard", "task_mean", "task_range"]
