"""Supervised training: sample a task batch -> meta_step, stepped by the shared runtime (log, checkpoint, resume).

This module supplies the supervised species' step and state (:class:`PhaseTrainer`: the learner, optimiser,
schedules and task generator) and its hooks; the loop, checkpoints, resume, signals, the divergence guard,
validation, TensorBoard and the run folder are ``torchmaml.run`` (``trainer``, ``hooks``, ``phases``).

A run has one or two phases: ``maml`` (meta-training) and, if ``config.pretrained_baseline``, ``pretrained`` (the
joint-training baseline). Each phase checkpoints every ``checkpoint_every`` iterations (model, learned
rates, optimiser, iteration, every random-number generator, the metrics so far are on disk) and writes
``checkpoint-<phase>.pt`` when it is done. ``train_run(..., resume=True)`` continues from the newest valid
checkpoint, so a run killed at any instant and resumed ends bit-identical to an uninterrupted one; it refuses
a checkpoint of another configuration, sets a corrupt final checkpoint aside (``.corrupt``) and continues
from the newest good periodic one, and extends a finished phase whose ``iterations`` were raised.

A new run validates everything it can (data, device, sizes) before it writes anything, and refuses a folder
that holds a run already unless ``overwrite`` (``torchmaml.run.folder``). Nothing in a run folder is written
or read through a symbolic link (``torchmaml.run.files``).

Non-finite losses or meta-gradients never reach the parameters (``MetaLearner.meta_step`` skips them);
after ``max_consecutive_skips`` skipped steps in a row the run stops with a ``DivergenceError``, and a step
that leaves non-finite weights stops it at once. The error names the last good checkpoint: the newest one
whose weights are finite and whose loss (at the next step) was finite.
SIGINT/SIGTERM finish the current iteration, write a checkpoint and raise ``Interrupted``
(``torchmaml.run.signals``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from torchmaml.benchmark import benchmark_of
from torchmaml.checkpoint import CheckpointError, load_module_state
from torchmaml.config import TrainConfig, to_toml
from torchmaml.distributed import shard, task_range
from torchmaml.errors import ConfigError, first_line
from torchmaml.estimators import get_estimator
from torchmaml.evaluate import adaptation_scores, own_adaptation_scores
from torchmaml.experiment import (
    MAML,
    PRETRAINED,
    build_learner,
    build_optimizer,
    build_scheduler,
    build_step_rule,
    metric_of,
    stationarity_batch,
    training_tasks,
)
from torchmaml.learner import MetaLearner
from torchmaml.plots import plot_learning_curve
from torchmaml.run import seeds
from torchmaml.run.hooks import (
    DivergenceError,
    DivergenceGuard,
    Every,
    Hook,
    Metrics,
    Progress,
    TensorBoard,
    TimeLimit,
    Validation,
)
from torchmaml.run.metrics_log import read_records
from torchmaml.run.phases import train_phases
from torchmaml.run.seeds import model_seed, task_stream
from torchmaml.run.signals import Interrupted, StopFlag
from torchmaml.run.team import SOLO, Team
from torchmaml.run.trainer import Trainer
from torchmaml.rundir import RunDir
from torchmaml.schedules import multi_step_weights, uses_first_order
from torchmaml.theory.stationarity import meta_gradient_norm


def train_run(
    config: TrainConfig,
    root: Path,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    team: Team = SOLO,
) -> RunDir:
    """Meta-train (and, if ``config.pretrained_baseline``, train the pretrained baseline) into the folder ``root``.

    With ``resume=True`` every phase continues from its newest valid checkpoint (a finished phase is skipped
    unless ``config`` raises its iterations; ``config`` may differ from the folder's own in those only). A new
    run refuses a folder holding a run unless ``overwrite``, which deletes that run first.

    With a ``team`` of several processes (``torchrun``), each meta-batch is shared by the ranks
    (``torchmaml.distributed``): the same tasks, the same meta-gradient, the same weights as one process.
    """
    run = RunDir(Path(root))
    if config.threads is not None:  # small models run best on one thread, and do not slow down on a busy CPU
        torch.set_num_threads(config.threads)
    phases = [(MAML, config.iterations)]
    if config.pretrained_baseline:
        phases.append((PRETRAINED, config.pretrained_iterations))
    train_phases(
        run,
        config,
        phases,
        lambda kind, iterations: build_phase(config, kind, iterations, run, progress, team),
        species="supervised",
        resume=resume,
        overwrite=overwrite,
        saved=run.load_config,
        to_toml=to_toml,
        plot=lambda: _plot(run, phases),
        team=team,
    )
    return run


def _plot(run: RunDir, phases: list[tuple[str, int]]) -> None:
    plot_learning_curve({kind: read_records(run.metrics(kind)) for kind, _ in phases}, run.learning_curve)


def build_phase(
    config: TrainConfig, kind: str, iterations: int, run: RunDir, progress: bool, team: Team = SOLO
) -> PhaseTrainer:
    """The trainer of one phase; sizes that cannot be allocated are a one-line ``ConfigError``."""
    with _allocation_errors():
        return PhaseTrainer(config, kind, iterations, run, progress, team)


@contextmanager
def _allocation_errors() -> Iterator[None]:
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise ConfigError(_no_memory(error)) from None
    except RuntimeError as error:
        if "allocate" not in str(error) and "out of memory" not in str(error):
            raise
        raise ConfigError(_no_memory(error)) from None


def _no_memory(error: BaseException) -> str:
    return (
        f"this configuration needs more memory than there is ({first_line(error)[:120]}); lower hidden, filters, "
        "meta_batch_size, support/query sizes or image_size"
    )


class PhaseTrainer:
    """One phase (``maml`` or ``pretrained``) of a run: the learner, its optimiser and task sampler, stepped by
    a :class:`torchmaml.run.trainer.Trainer` (``self.trainer``) that owns the loop and the run folder. With a
    ``team``, every rank samples the same meta-batch and computes the meta-gradient of its share."""

    def __init__(
        self, config: TrainConfig, kind: str, iterations: int, run: RunDir, progress: bool, team: Team = SOLO
    ) -> None:
        self.config, self.kind, self.iterations, self.team = config, kind, iterations, team
        task_range(config.meta_batch_size, team.rank, team.size)  # refuses fewer tasks than processes
        torch.manual_seed(model_seed(config.seed))  # the process's global generator: a run owns its process
        self.learner: MetaLearner = build_learner(config, kind)
        self.learner.process_group = team.group if team.distributed else None
        self.optimizer = build_optimizer(config, self.learner)
        self.scheduler = build_scheduler(config, self.optimizer, iterations)
        self.estimator = self.learner.estimator
        self.warmup_estimator = get_estimator("first_order")
        self.step_rule = build_step_rule(config, kind, team)
        self.monitored = stationarity_batch(config) if config.stationarity_every else None
        benchmark = benchmark_of(config)
        self.validation = benchmark.evaluation_batches(config, "validation", None) if config.validate_every else None
        self.metric = metric_of(config)
        self.tasks = training_tasks(config)
        self.generator = seeds.generator(task_stream(config.seed, kind))
        self.guard = DivergenceGuard(
            config.max_consecutive_skips,
            self.learner.parameters,
            what="a non-finite loss or meta-gradient",
            advice="Lower inner_lr or outer_lr",
        )
        hooks = [
            self.guard,
            Every(config.stationarity_every, self._stationarity),
            Validation(
                config.validate_every,
                self._validation_score,
                name=self.metric.name,
                higher_is_better=self.metric.higher_is_better,
                best=run.best_checkpoint(kind),
            ),
            TensorBoard(run.tensorboard(kind), self._logged),
            Progress(progress, self._postfix),
            TimeLimit(config.time_limit_minutes),
            _StopAtEpsilon(config.stop_at_epsilon),
        ]
        self.trainer = Trainer(
            self.step,
            self,
            hooks,
            run=run,
            kind=kind,
            iterations=iterations,
            config=config,
            checkpoint_every=config.checkpoint_every,
            keep_checkpoints=config.keep_checkpoints,
            team=team,
        )

    @property
    def iteration(self) -> int:
        return self.trainer.iteration

    @property
    def elapsed(self) -> float:
        return self.trainer.elapsed

    def run(self, stop: StopFlag, resume: bool) -> None:
        """Train from the start (or the newest valid checkpoint) to ``iterations``; write the final checkpoint."""
        with _allocation_errors():
            self.trainer.run(stop, resume)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The learner, optimiser, schedules and task generator, as plain data (the trainer adds its own)."""
        return {
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "task_generator": self.generator.get_state(),
            "step_rule": self.step_rule.state_dict() if self.step_rule is not None else {},
            "compile_calls": self.learner.meta_gradient_calls,
            "estimator": self.estimator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Restore ``state`` (from the checkpoint ``path``); a ``CheckpointError`` if it does not fit this run."""
        load_module_state(self.learner, state.get("learner"), path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["task_generator"])
        if self.step_rule is not None:
            self.step_rule.load_state_dict(state["step_rule"])
        self.learner.meta_gradient_calls = state.get("compile_calls", state["iteration"])
        self.estimator.load_state_dict(state.get("estimator", {}))  # checkpoints of earlier releases have none

    # -- one iteration ----------------------------------------------------------------------------

    def step(self, iteration: int) -> Metrics:
        """Iteration ``iteration``: sample a task batch, apply the schedules, take one meta-step."""
        config = self.config
        batch = self.tasks.sample(config.meta_batch_size, self.generator).to(device=config.device)
        self._apply_schedules(iteration)
        theory = self.step_rule.update(self.learner, self.optimizer) if self.step_rule else {}
        share = shard(batch, self.learner.process_group) if self.team.distributed else batch
        step = self.learner.meta_step(share, self.optimizer, loss_before=self._logged(iteration))
        metrics = {**step, **self._rates(), **theory}
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _logged(self, iteration: int) -> bool:
        """Whether ``iteration`` logs ``loss_before`` and TensorBoard scalars (every ``log_every``, the last)."""
        return iteration % self.config.log_every == 0 or iteration == self.iterations

    def _postfix(self, metrics: Metrics) -> dict[str, str] | None:
        if not self._logged(self.trainer.iteration):
            return None
        return {"loss": f"{metrics['loss_after']:.3f}", "skipped": str(self.guard.skipped_total)}

    def _apply_schedules(self, iteration: int) -> None:
        """MAML++: multi-step loss weights and the first-order warm-up for this iteration."""
        config, learner = self.config, self.learner
        learner.step_weights = multi_step_weights(iteration, learner.inner_steps, config.multi_step_loss_iterations)
        warm = uses_first_order(iteration, config.first_order_iterations)
        learner.estimator = self.warmup_estimator if warm else self.estimator

    def _stationarity(self) -> Metrics:
        """``||grad F(w)||`` on the fixed monitoring batch (every ``stationarity_every`` iterations)."""
        size, error = meta_gradient_norm(self.learner, self.monitored)
        return {"grad_norm": size, "grad_norm_se": error}

    def _validation_score(self) -> float:
        """The metric after ``max(eval_steps)`` inner steps on the validation tasks (every ``validate_every``
        iterations; the best weights so far are kept as ``checkpoint-<phase>-best.pt``). An estimator with its own
        adaptation (iMAML) is scored after that many steps of it, the adaptation its weights are trained for."""
        steps = max(self.config.eval_steps)
        chunks = next(iter(self.validation.values()))
        if getattr(self.learner.estimator, "own_adaptation", None) is not None:
            return float(own_adaptation_scores(self.learner, chunks, [steps], self.metric.fn).mean())
        return float(adaptation_scores(self.learner, chunks, steps, self.metric.fn)[:, steps].mean())

    def _rates(self) -> Metrics:
        """The outer rate in use and, when it is one learned scalar, the inner rate (AlphaMAML logs both)."""
        rates = {"outer_lr": float(self.optimizer.param_groups[0]["lr"])}
        scalar = dict(self.learner.inner_rate.named_parameters()).get("lr")
        if scalar is not None:
            rates["inner_lr"] = float(scalar.detach())
        return rates


class _StopAtEpsilon(Hook):
    """Stop once the stationarity monitor's ``||grad F||`` is at most ``epsilon`` (``None``: never)."""

    writer_only = True  # the monitor runs on rank 0

    def __init__(self, epsilon: float | None) -> None:
        self.epsilon = epsilon

    def stop_reason(self, trainer: Trainer, metrics: Metrics) -> str | None:
        if self.epsilon is None or "grad_norm" not in metrics or metrics["grad_norm"] > self.epsilon:
            return None
        return f"||grad F|| = {metrics['grad_norm']:.4g} <= stop_at_epsilon {self.epsilon}"


__all__ = ["CheckpointError", "DivergenceError", "Interrupted", "PhaseTrainer", "build_phase", "train_run"]
