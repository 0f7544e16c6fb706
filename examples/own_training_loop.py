"""Meta-train in your own loop: gradient accumulation, clipping and CPU mixed precision around
``learner.backward``, exactly where ``loss.backward()`` would be.

    python examples/own_training_loop.py --iterations 300
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from torchmaml import MetaLearner
from torchmaml.data import SinusoidTasks


def main(iterations: int, accumulate: int = 2, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.01, inner_steps=1)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    tasks, generator = SinusoidTasks(), torch.Generator().manual_seed(seed)
    for iteration in range(iterations):
        optimizer.zero_grad()
        for _ in range(accumulate):  # two meta-batches of 12 tasks: the gradient of 24
            with torch.autocast("cpu", dtype=torch.bfloat16):
                metrics = learner.backward(tasks.sample(12, generator))
        for p in learner.parameters():
            if p.grad is not None:
                p.grad /= accumulate
        torch.nn.utils.clip_grad_norm_(learner.parameters(), max_norm=10.0)
        optimizer.step()
        if iteration % 100 == 0:
            print(f"iteration {iteration}: query loss after adaptation {metrics['loss_after']:.3f}")
    with torch.no_grad():
        final = learner.query_losses(tasks.sample(100, generator), steps=1)[:, 1].mean().item()
    print(f"held-out query loss after one step: {final:.3f}")
    return final


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    main(parser.parse_args().iterations)
