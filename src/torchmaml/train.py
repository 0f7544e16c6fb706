"""The training loop: sample a task batch -> meta_step -> log; then checkpoint, baseline and plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from torchmaml.checkpoint import atomic_write_bytes, save_checkpoint
from torchmaml.config import TrainConfig, to_toml
from torchmaml.experiment import MAML, PRETRAINED, build_learner, build_tasks
from torchmaml.learner import MetaLearner
from torchmaml.plots import plot_learning_curve, read_metrics
from torchmaml.rundir import RunDir


def train_run(config: TrainConfig, root: Path, progress: bool = True) -> RunDir:
    """Meta-train (and, if ``config.baseline``, train the pretrained baseline) into the folder ``root``."""
    run = RunDir(Path(root))
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.config, to_toml(config).encode())
    kinds = [(MAML, config.iterations)]
    if config.baseline:
        kinds.append((PRETRAINED, config.baseline_iterations))
    for kind, iterations in kinds:
        learner = train_learner(config, kind, iterations, run, progress)
        save_checkpoint(
            run.checkpoint(kind),
            {"learner": learner.state_dict(), "iteration": iterations, "kind": kind, "config": config.model_dump()},
        )
    curves = {kind: read_metrics(run.metrics(kind)) for kind, _ in kinds}
    plot_learning_curve(curves, run.learning_curve)
    return run


def train_learner(config: TrainConfig, kind: str, iterations: int, run: RunDir, progress: bool) -> MetaLearner:
    """Run ``iterations`` meta-steps of the ``kind`` learner, logging every iteration to JSONL."""
    learner = build_learner(config, kind)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.outer_lr)
    tasks = build_tasks(config)
    generator = torch.Generator().manual_seed(config.seed * 2 + (kind == PRETRAINED))
    writer = SummaryWriter(log_dir=str(run.tensorboard(kind)))
    start = time.perf_counter()
    with (
        open(run.metrics(kind), "w") as log,
        tqdm(total=iterations, desc=f"train {kind}", disable=not progress, unit="it", dynamic_ncols=True) as bar,
    ):
        for iteration in range(1, iterations + 1):
            batch = tasks.sample(config.meta_batch_size, generator).to(device=config.device)
            metrics = learner.meta_step(batch, optimizer)
            record = {"iteration": iteration, **metrics, "seconds": round(time.perf_counter() - start, 4)}
            log.write(json.dumps(record) + "\n")
            if iteration % config.log_every == 0 or iteration == iterations:
                for name, value in metrics.items():
                    writer.add_scalar(f"{kind}/{name}", value, iteration)
                bar.set_postfix(loss=f"{metrics['loss_after']:.3f}")
                log.flush()
            bar.update(1)
    writer.close()
    return learner
