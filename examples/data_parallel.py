"""Data parallel meta-training with ``torch.distributed``: each process computes the meta-gradient of its
share of the tasks with ``learner.backward``, one all-reduce averages them, every process takes the same step.

    torchrun --nproc-per-node 2 examples/data_parallel.py --iterations 50

(or ``python examples/data_parallel.py``, which starts the two processes itself on this machine).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchmaml import MetaLearner
from torchmaml.data import SinusoidTasks

TASKS_PER_BATCH = 8


def train(iterations: int) -> list[torch.Tensor]:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every process
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.01, inner_steps=1)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)  # the same global batch on every process
    for _ in range(iterations):
        batch = SinusoidTasks().sample(TASKS_PER_BATCH, generator)
        share = TASKS_PER_BATCH // world
        optimizer.zero_grad()
        learner.backward(batch.slice(rank * share, (rank + 1) * share))
        for p in learner.parameters():  # the mean over processes: the meta-gradient of the whole batch
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def worker(rank: int, world: int, iterations: int, port: int, out: str | None) -> None:
    store = dist.TCPStore("127.0.0.1", port, is_master=False)  # the launching process holds the store
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    run(iterations, out)


def run(iterations: int, out: str | None) -> None:
    if not dist.is_initialized():  # started by torchrun, whose agent holds the store
        dist.init_process_group("gloo")
    try:
        weights = torch.cat([w.reshape(-1) for w in train(iterations)])
        gathered = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, weights)
        if dist.get_rank() == 0:
            same = all(torch.equal(gathered[0], g) for g in gathered)
            print(f"{dist.get_world_size()} processes, {iterations} iterations: identical weights: {same}")
            if out:
                torch.save(weights, out)
    finally:
        dist.destroy_process_group()
    # With torch 2.13, a process that ran torch.func transforms and used a gloo process group can abort in the
    # interpreter's teardown, after all work is done ("terminate called without an active exception": 4 of 10
    # runs of a minimal script without torchmaml). Everything is written and flushed by now: leave at once.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2, help="without torchrun: processes to start")
    parser.add_argument("--port", type=int, default=29512)
    parser.add_argument("--out", default=None, help="save the final weights (flat) here")
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        run(args.iterations, args.out)
    else:
        # the store lives in this process, which outlives the workers: none loses it while tearing down
        store = dist.TCPStore("127.0.0.1", args.port, is_master=True, wait_for_workers=False)
        settings = (args.processes, args.iterations, args.port, args.out)
        torch.multiprocessing.spawn(worker, args=settings, nprocs=args.processes)
