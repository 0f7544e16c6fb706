"""The processes that train one run together (``torchrun``), as an explicit object the runtime is handed.

A ``Team`` is this process's rank, the number of processes and their ``torch.distributed`` process group.
``SOLO`` is the one-process team: every method is then a no-op. Under ``torchrun`` :func:`join` initialises
the process group (gloo for CPU tensors, NCCL for CUDA ones) and returns this process's team.

The runtime's rules for a team (``torchmaml.run.trainer``, ``torchmaml.run.phases``):

- rank 0 (``writer``) alone writes the run folder (config, checkpoints, metrics, TensorBoard, plots) and
  runs the monitors; every rank holds the same training state, checked at every checkpoint (:meth:`same`);
- every decision that ends or changes the loop (a signal, a stop reason, a resume point, a setup error) is
  taken together (:meth:`any`, :meth:`broadcast`, :meth:`agree`), so no rank waits for a peer that left;
- a rank that dies makes the next collective fail on the others: :meth:`lost` names the missing ranks
  (each survivor checks in at torchrun's store) in one :class:`LostRank` line.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_leaves

from torchmaml.errors import TorchMAMLError, first_line

T = TypeVar("T")
CHECK_IN_SECONDS = 5.0


class LostRank(TorchMAMLError):
    """A process of the group died or left: the collective it should have joined failed."""


class ReportedByWriter(TorchMAMLError):
    """An error that rank 0 reports; the other ranks stop with it silently (one line, not one per rank)."""


@dataclass(frozen=True)
class Team:
    """This process's place among the ``size`` processes of a run; ``SOLO`` for one process."""

    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None
    restart: int = 0  # how often torchrun has restarted the group (TORCHELASTIC_RESTART_COUNT)

    @property
    def writer(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag, whether it is set on any rank (one small all-reduce)."""
        if not self.distributed:
            return flags
        values = torch.tensor([int(f) for f in flags], dtype=torch.int64)
        with self.collective("a stop decision"):
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group)
        return tuple(bool(v) for v in values.tolist())

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object, tensors included)."""
        if not self.distributed:
            return value
        box = [value]
        with self.collective("a broadcast from rank 0"):
            dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree(self, work: Callable[[], T]) -> T:
        """``work()`` on every rank; if it raises a ``TorchMAMLError`` on any rank, every rank raises: rank 0
        its own error or the first failing rank's (named), the others :class:`ReportedByWriter` (silent), so
        the error is printed once."""
        if not self.distributed:
            return work()
        try:
            result, message = work(), None
        except TorchMAMLError as error:
            result, message = error, str(error)
        messages: list[str | None] = [None] * self.size
        with self.collective("a setup check"):
            dist.all_gather_object(messages, message, group=self.group)
        failing = [rank for rank, m in enumerate(messages) if m is not None]
        if not failing:
            return result
        if not self.writer:
            raise ReportedByWriter(messages[failing[0]])
        if isinstance(result, TorchMAMLError):
            raise result
        raise TorchMAMLError(f"rank {failing[0]}: {messages[failing[0]]}")

    def same(self, state: Any, what: str) -> None:
        """Check that every rank holds the same ``state`` (a digest of its tensors); a mismatch is an error."""
        if not self.distributed:
            return
        digests: list[str | None] = [None] * self.size
        mine = digest(state)
        with self.collective("the state check"):
            dist.all_gather_object(digests, mine, group=self.group)
        differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differing:
            raise TorchMAMLError(
                f"{what}: the training state of rank(s) {differing} differs from rank 0's; the processes no longer "
                "compute the same run (a non-deterministic model or a bug): resume from the newest checkpoint"
            )

    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn the failure of the collectives in the block (a peer died) into one :class:`LostRank` line."""
        try:
            yield
        except RuntimeError as error:
            if not self.distributed or not communication_failure(error):
                raise
            raise self.lost(what, error) from None

    def lost(self, what: str, error: BaseException) -> LostRank:
        """The error for a failed collective: which ranks did not check in at the store within seconds."""
        missing = self._missing_ranks()
        who = f"rank {', '.join(map(str, missing))}" if missing else "a rank"
        return LostRank(
            f"{who} of {self.size} left the process group during {what} ({first_line(error)[:100]}); "
            "the newest checkpoint in the run folder is intact: continue with `torchmaml train --resume RUN_DIR` "
            "(under torchrun as before)"
        )

    def _missing_ranks(self) -> list[int]:
        guess = [1 - self.rank] if self.size == 2 else []  # without a store: of two ranks, the other one
        if "MASTER_ADDR" not in os.environ:
            return guess
        try:
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=timedelta(seconds=CHECK_IN_SECONDS),
            )
            prefix = f"torchmaml/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{self.restart}/alive/"
            store.set(f"{prefix}{self.rank}", "1")
            deadline = time.monotonic() + CHECK_IN_SECONDS
            while time.monotonic() < deadline:
                missing = [r for r in range(self.size) if not store.check([f"{prefix}{r}"])]
                if not missing:
                    return []
                time.sleep(0.2)
            return missing
        except RuntimeError:  # the store is gone too (torchrun's agent stopped)
            return guess


SOLO = Team()


def communication_failure(error: RuntimeError) -> bool:
    """Whether ``error`` is a failed collective (gloo or NCCL lost a peer) rather than a bug in the step."""
    text = str(error)
    return isinstance(error, dist.DistError) or "gloo" in text or "NCCL" in text or "Connection" in text


def digest(state: Any) -> str:
    """A SHA-256 of every tensor in ``state`` (weights, optimiser moments, generator states), in order:
    equal states, equal digests. Plain numbers are left out: some are per-process measurements (CPU time)."""
    hasher = hashlib.sha256()
    for leaf in tree_leaves(state):
        if isinstance(leaf, torch.Tensor):
            hasher.update(leaf.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def join() -> Team:
    """This process's team: ``SOLO`` unless launched by torchrun, else the initialised process group: gloo
    for CPU tensors and, where CUDA is available, NCCL for CUDA ones (each local process on its own GPU,
    ``LOCAL_RANK``, so ``device = "cuda"`` means that one)."""
    if not launched_by_torchrun():
        return SOLO
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            "cpu:gloo,cuda:nccl" if cuda else "gloo",
            store=_attempt_store(rank, size, restart),
            rank=rank,
            world_size=size,
        )
    return Team(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        group=dist.group.WORLD,
        restart=restart,
    )


def _attempt_store(rank: int, size: int, restart: int) -> dist.Store:
    """torchrun's store (its agent's, or rank 0's), with keys of this attempt only: after a restart, the
    ranks of the new group must not read the addresses of the dead group's processes."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size=size,
        is_master=not agent and rank == 0,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"torchmaml/attempt-{restart}", store)


def leave(team: Team) -> None:
    """Destroy the process group (after the last collective)."""
    if team.distributed and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["SOLO", "LostRank", "ReportedByWriter", "Team", "digest", "join", "launched_by_torchrun", "leave"]
