"""Your own meta-training loop over several processes with ``torch.distributed``, launched with torchrun:

    torchrun --standalone --nproc-per-node 2 examples/data_parallel.py --iterations 50

Every process draws the same global meta-batch (same seed), keeps its share (``torchmaml.distributed.shard``)
and calls ``learner.backward`` on it; the learner's ``process_group`` averages the meta-gradients over all
tasks (weighted by each share's size), so every process takes the same optimiser step as one process with the
whole batch would. Nothing else in the loop changes. (``python examples/data_parallel.py`` runs one process.)
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
from torchmaml.distributed import shard

TASKS_PER_BATCH = 9  # need not divide by the number of processes


def train(iterations: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Meta-train a sinusoid MLP; the final weights as one vector."""
    torch.manual_seed(0)  # the same initial weights on every process
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)).double()
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.01, inner_steps=1, process_group=group)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    tasks, generator = SinusoidTasks(dtype=torch.float64), torch.Generator().manual_seed(1)
    for _ in range(iterations):
        batch = tasks.sample(TASKS_PER_BATCH, generator)  # the same global batch on every process
        optimizer.zero_grad()
        learner.backward(shard(batch, group) if group is not None else batch)  # .grad: the whole batch's
        optimizer.step()
    return torch.cat([w.detach().reshape(-1) for w in model.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--out", default=None, help="save the final weights (one vector) here")
    args = parser.parse_args()
    if "RANK" not in os.environ:  # no torchrun: one process, the whole batch
        weights = train(args.iterations, None)
        if args.out:
            torch.save(weights, args.out)
        return
    dist.init_process_group("gloo")
    weights = train(args.iterations, dist.group.WORLD)
    gathered = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, weights)
    if dist.get_rank() == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered)
        print(f"{dist.get_world_size()} processes, {args.iterations} iterations: identical weights: {same}")
        if args.out:
            torch.save(weights, args.out)
    dist.destroy_process_group()
    # With torch 2.13, a process that ran torch.func transforms and used a gloo process group can abort in the
    # interpreter's teardown, after all work is done ("terminate called without an active exception").
    # Everything is written by now: leave at once.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
