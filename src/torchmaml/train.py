"""The training loop: sample a task batch -> meta_step -> log -> checkpoint, resumable at any point.

A run has one or two phases: ``maml`` (meta-training) and, if ``config.baseline``, ``pretrained`` (the
joint-training baseline). Each phase checkpoints every ``checkpoint_every`` iterations (model, learned
rates, optimiser, iteration, every random-number generator, the metrics so far are on disk) and writes
``checkpoint-<phase>.pt`` when it is done. ``train_run(..., resume=True)`` continues from the newest valid
checkpoint, so a run killed at any instant and resumed ends bit-identical to an uninterrupted one.

Non-finite losses or meta-gradients never reach the parameters (``MetaLearner.meta_step`` skips them);
after ``max_consecutive_skips`` skipped steps in a row the run stops with a ``DivergenceError``.
SIGINT/SIGTERM finish the current iteration, write a checkpoint and raise ``Interrupted``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from torchmaml.checkpoint import CheckpointError, CheckpointStore, atomic_write_bytes, save_checkpoint
from torchmaml.config import TrainConfig, to_toml
from torchmaml.errors import TorchMAMLError
from torchmaml.estimators import get_estimator
from torchmaml.evaluate import adaptation_scores
from torchmaml.experiment import (
    MAML,
    PRETRAINED,
    build_learner,
    build_optimizer,
    build_scheduler,
    build_step_rule,
    build_tasks,
    evaluation_batches,
    metric_of,
    stationarity_batch,
)
from torchmaml.extras import SummaryWriter  # tensorboard is optional (an extra)
from torchmaml.learner import MetaLearner
from torchmaml.plots import plot_learning_curve, read_metrics
from torchmaml.rng import capture_rng, restore_rng
from torchmaml.rundir import RunDir
from torchmaml.runlock import exclusive_run
from torchmaml.schedules import multi_step_weights, uses_first_order
from torchmaml.theory.stationarity import meta_gradient_norm


class DivergenceError(TorchMAMLError):
    """Too many consecutive meta-steps had a non-finite loss or meta-gradient."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``signal_number`` says which."""

    def __init__(self, signal_number: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signal_number}; checkpoint {checkpoint}")
        self.signal_number = signal_number
        self.checkpoint = checkpoint


def train_run(config: TrainConfig, root: Path, progress: bool = True, resume: bool = False) -> RunDir:
    """Meta-train (and, if ``config.baseline``, train the pretrained baseline) into the folder ``root``.

    With ``resume=True`` the folder's own config is used and every phase continues from its newest valid
    checkpoint (a finished phase is skipped).
    """
    run = RunDir(Path(root))
    if config.threads is not None:  # small models run best on one thread, and do not slow down on a busy CPU
        torch.set_num_threads(config.threads)
    phases = [(MAML, config.iterations)]
    if config.baseline:
        phases.append((PRETRAINED, config.baseline_iterations))
    with exclusive_run(run.root), _stop_requests() as stop:
        if not resume:
            atomic_write_bytes(run.config, to_toml(config).encode())
        for kind, iterations in phases:
            if resume and run.checkpoint(kind).exists():
                continue
            PhaseTrainer(config, kind, iterations, run, progress).run(stop, resume)
    plot_learning_curve({kind: read_metrics(run.metrics(kind)) for kind, _ in phases}, run.learning_curve)
    return run


class PhaseTrainer:
    """One phase (``maml`` or ``pretrained``) of a run: the learner, its optimiser and task sampler."""

    def __init__(self, config: TrainConfig, kind: str, iterations: int, run: RunDir, progress: bool) -> None:
        self.config, self.kind, self.iterations, self.run_dir, self.progress = config, kind, iterations, run, progress
        self.learner: MetaLearner = build_learner(config, kind)
        self.optimizer = build_optimizer(config, self.learner)
        self.scheduler = build_scheduler(config, self.optimizer, iterations)
        self.estimator = self.learner.estimator
        self.warmup_estimator = get_estimator("first_order")
        self.step_rule = build_step_rule(config, kind)
        self.monitored = stationarity_batch(config) if config.stationarity_every else None
        self.validation = evaluation_batches(config, "validation") if config.validate_every else None
        self.metric = metric_of(config)
        self.best_validation: float | None = None
        self.tasks = build_tasks(config)
        self.generator = torch.Generator().manual_seed(config.seed * 2 + (kind == PRETRAINED))
        self.iteration = 0
        self.elapsed = 0.0
        self.skipped_total = 0
        self.skipped_in_a_row = 0
        self.last_checkpoint: Path | None = None

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically, as plain data."""
        return {
            "kind": self.kind,
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "skipped_total": self.skipped_total,
            "skipped_in_a_row": self.skipped_in_a_row,
            "best_validation": self.best_validation,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "task_generator": self.generator.get_state(),
            "step_rule": self.step_rule.state_dict() if self.step_rule is not None else {},
            "rng": capture_rng(),
            "config": self.config.model_dump(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.elapsed = state["elapsed"]
        self.skipped_total = state["skipped_total"]
        self.skipped_in_a_row = state["skipped_in_a_row"]
        self.best_validation = state["best_validation"]
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["task_generator"])
        if self.step_rule is not None:
            self.step_rule.load_state_dict(state["step_rule"])
        restore_rng(state["rng"])

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: _StopFlag, resume: bool) -> None:
        """Train from the start (or the newest valid checkpoint) to ``iterations``; write the final checkpoint."""
        store = self.run_dir.checkpoints(self.kind, self.config.keep_checkpoints)
        if resume:
            found = store.newest_valid(warn=lambda message: print(f"torchmaml: warning: {message}", file=sys.stderr))
            if found is not None:
                self.load_state_dict(found[1])
                self.last_checkpoint = found[0]
                print(f"resumed {self.kind} at iteration {self.iteration} from {found[0]}", flush=True)
        _truncate_metrics(self.run_dir.metrics(self.kind), self.iteration)
        writer = SummaryWriter(log_dir=str(self.run_dir.tensorboard(self.kind)), purge_step=self.iteration + 1)
        try:
            self._loop(stop, store, writer)
        finally:
            writer.close()
        save_checkpoint(self.run_dir.checkpoint(self.kind), self.state_dict())

    def _loop(self, stop: _StopFlag, store: CheckpointStore, writer: SummaryWriter) -> None:
        config = self.config
        with (
            open(self.run_dir.metrics(self.kind), "a") as log,
            tqdm(
                total=self.iterations,
                initial=self.iteration,
                desc=f"train {self.kind}",
                disable=not self.progress,
                unit="it",
                dynamic_ncols=True,
            ) as bar,
        ):
            while self.iteration < self.iterations:
                started = time.perf_counter()
                batch = self.tasks.sample(config.meta_batch_size, self.generator).to(device=config.device)
                self._apply_schedules(self.iteration + 1)
                theory = self.step_rule.update(self.learner, self.optimizer) if self.step_rule else {}
                logged = (self.iteration + 1) % config.log_every == 0 or self.iteration + 1 == self.iterations
                step = self.learner.meta_step(batch, self.optimizer, loss_before=logged)
                metrics = {**step, **self._rates(), **theory}
                if self.scheduler is not None:
                    self.scheduler.step()
                self.iteration += 1
                self.elapsed += time.perf_counter() - started
                self._count_skips(metrics)
                metrics.update(self._stationarity())
                metrics.update(self._validate())
                record = {"iteration": self.iteration, **metrics, "seconds": round(self.elapsed, 4)}
                log.write(json.dumps(record) + "\n")
                if logged:
                    for name, value in metrics.items():
                        writer.add_scalar(f"{self.kind}/{name}", value, self.iteration)
                    bar.set_postfix(loss=f"{metrics['loss_after']:.3f}", skipped=self.skipped_total)
                bar.update(1)
                checkpoint_due = self.iteration % config.checkpoint_every == 0
                if checkpoint_due or stop.signal_number is not None:
                    log.flush()
                    self.last_checkpoint = store.save(self.iteration, self.state_dict())
                if stop.signal_number is not None:
                    raise Interrupted(stop.signal_number, self.last_checkpoint)
                if self._out_of_time():
                    print(
                        f"{self.kind}: time limit of {config.time_limit_minutes} minutes reached at iteration "
                        f"{self.iteration}; stopping",
                        flush=True,
                    )
                    break
                if self._reached_epsilon(metrics):
                    print(
                        f"{self.kind}: ||grad F|| = {metrics['grad_norm']:.4g} <= stop_at_epsilon "
                        f"{config.stop_at_epsilon} at iteration {self.iteration}; stopping",
                        flush=True,
                    )
                    break
            log.flush()

    def _apply_schedules(self, iteration: int) -> None:
        """MAML++: multi-step loss weights and the first-order warm-up for this iteration."""
        config, learner = self.config, self.learner
        learner.step_weights = multi_step_weights(iteration, learner.inner_steps, config.multi_step_loss_iterations)
        warm = uses_first_order(iteration, config.first_order_iterations)
        learner.estimator = self.warmup_estimator if warm else self.estimator

    def _stationarity(self) -> dict[str, float]:
        """Every ``stationarity_every`` iterations: ``||grad F(w)||`` on the fixed monitoring batch."""
        every = self.config.stationarity_every
        if not every or self.iteration % every:
            return {}
        size, error = meta_gradient_norm(self.learner, self.monitored)
        return {"grad_norm": size, "grad_norm_se": error}

    def _validate(self) -> dict[str, float]:
        """Every ``validate_every`` iterations: the metric after ``max(eval_steps)`` inner steps on the
        validation tasks; the best weights so far are kept as ``checkpoint-<phase>-best.pt``."""
        every = self.config.validate_every
        if not every or self.iteration % every:
            return {}
        steps = max(self.config.eval_steps)
        chunks = next(iter(self.validation.values()))
        value = float(adaptation_scores(self.learner, chunks, steps, self.metric.fn)[:, steps].mean())
        better = self.best_validation is None or (
            value > self.best_validation if self.metric.higher_is_better else value < self.best_validation
        )
        if better:
            self.best_validation = value
            save_checkpoint(self.run_dir.best_checkpoint(self.kind), self.state_dict())
        return {f"val_{self.metric.name}": value}

    def _out_of_time(self) -> bool:
        limit = self.config.time_limit_minutes
        return limit is not None and self.elapsed >= 60 * limit

    def _reached_epsilon(self, metrics: dict[str, float]) -> bool:
        epsilon = self.config.stop_at_epsilon
        return epsilon is not None and "grad_norm" in metrics and metrics["grad_norm"] <= epsilon

    def _rates(self) -> dict[str, float]:
        """The outer rate in use and, when it is one learned scalar, the inner rate (AlphaMAML logs both)."""
        rates = {"outer_lr": float(self.optimizer.param_groups[0]["lr"])}
        scalar = dict(self.learner.inner_rate.named_parameters()).get("lr")
        if scalar is not None:
            rates["inner_lr"] = float(scalar.detach())
        return rates

    def _count_skips(self, metrics: dict[str, float]) -> None:
        if not metrics.get("skipped"):
            self.skipped_in_a_row = 0
            return
        self.skipped_total += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.config.max_consecutive_skips:
            last = self.last_checkpoint or "none yet"
            raise DivergenceError(
                f"{self.kind} diverged: {self.skipped_in_a_row} meta-steps in a row had a non-finite loss or "
                f"meta-gradient (up to iteration {self.iteration}); last good checkpoint: {last}. Lower "
                "inner_lr or outer_lr, then resume or restart"
            )


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Keep only the records of iterations ``1..iteration`` (a crash can leave later or partial lines)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by a crash: nothing after it was written completely
        if record.get("iteration", 0) > iteration:
            break
        kept.append(line + "\n")
    atomic_write_bytes(path, "".join(kept).encode())


class _StopFlag:
    """Set by the first SIGINT/SIGTERM; a second one stops at once (KeyboardInterrupt)."""

    signal_number: int | None = None

    def request(self, number: int, _frame: object) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = number


@contextmanager
def _stop_requests():
    """While active, SIGINT and SIGTERM set a flag instead of killing the process (main thread only)."""
    flag = _StopFlag()
    handled = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {sig: signal.signal(sig, flag.request) for sig in handled}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["CheckpointError", "DivergenceError", "Interrupted", "PhaseTrainer", "train_run"]
