"""The training loop: sample a task batch -> meta_step -> log -> checkpoint, resumable at any point.

A run has one or two phases: ``maml`` (meta-training) and, if ``config.baseline``, ``pretrained`` (the
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

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from tqdm.auto import tqdm

from torchmaml.checkpoint import (
    CheckpointError,
    CheckpointStore,
    check_config_digest,
    config_digest,
    load_module_state,
    save_checkpoint,
)
from torchmaml.config import TrainConfig, to_toml
from torchmaml.errors import ConfigError, TorchMAMLError, first_line
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
from torchmaml.plots import plot_learning_curve
from torchmaml.rng import capture_rng, restore_rng
from torchmaml.run import seeds
from torchmaml.run.files import WriteError, ensure_folder, write_atomic
from torchmaml.run.folder import check_new_run_folder, replace_run
from torchmaml.run.metrics_log import open_metrics, read_records, truncate_metrics
from torchmaml.run.resume import newest_state, phase_finished, remove_stale_temporaries
from torchmaml.run.seeds import model_seed, task_stream
from torchmaml.run.signals import Interrupted, StopFlag, stop_requests
from torchmaml.rundir import RunDir
from torchmaml.runlock import exclusive_run
from torchmaml.schedules import multi_step_weights, uses_first_order
from torchmaml.theory.stationarity import meta_gradient_norm


class DivergenceError(TorchMAMLError):
    """Too many consecutive meta-steps had a non-finite loss or meta-gradient."""


def train_run(
    config: TrainConfig, root: Path, progress: bool = True, resume: bool = False, overwrite: bool = False
) -> RunDir:
    """Meta-train (and, if ``config.baseline``, train the pretrained baseline) into the folder ``root``.

    With ``resume=True`` every phase continues from its newest valid checkpoint (a finished phase is skipped
    unless ``config`` raises its iterations; ``config`` may differ from the folder's own in those only). A new
    run refuses a folder holding a run unless ``overwrite``, which deletes that run first.
    """
    run = RunDir(Path(root))
    if config.threads is not None:  # small models run best on one thread, and do not slow down on a busy CPU
        torch.set_num_threads(config.threads)
    phases = [(MAML, config.iterations)]
    if config.baseline:
        phases.append((PRETRAINED, config.baseline_iterations))
    digest = config_digest(config.model_dump())
    with stop_requests() as stop:
        if resume:
            with exclusive_run(run.root):
                _prepare_resume(run, config)
                for kind, iterations in phases:
                    if not phase_finished(run.checkpoint(kind), iterations, digest, warn=_warn):
                        build_phase(config, kind, iterations, run, progress).run(stop, resume=True)
                _plot(run, phases)
            return run
        replacing = check_new_run_folder(run.root, overwrite)  # before building the data: writes nothing
        first = build_phase(config, MAML, config.iterations, run, progress)  # validates before anything is written
        if replacing:
            replace_run(run.root)
        with exclusive_run(run.root):
            write_atomic(run.config, to_toml(config).encode())
            first.run(stop, resume=False)
            for kind, iterations in phases[1:]:
                build_phase(config, kind, iterations, run, progress).run(stop, resume=False)
            _plot(run, phases)
    return run


def _prepare_resume(run: RunDir, config: TrainConfig) -> None:
    """Remove temporaries of killed writes; save ``config`` if it extends the run (more iterations)."""
    remove_stale_temporaries(run.root, report=lambda message: print(message, flush=True))
    saved = run.load_config()
    if config == saved:
        return
    if config_digest(config.model_dump()) != config_digest(saved.model_dump()):
        raise ConfigError(f"--resume continues {run.root} with its own config; only iterations can be raised")
    write_atomic(run.config, to_toml(config).encode())


def _plot(run: RunDir, phases: list[tuple[str, int]]) -> None:
    plot_learning_curve({kind: read_records(run.metrics(kind)) for kind, _ in phases}, run.learning_curve)


def build_phase(config: TrainConfig, kind: str, iterations: int, run: RunDir, progress: bool) -> PhaseTrainer:
    """The trainer of one phase; sizes that cannot be allocated are a one-line ``ConfigError``."""
    with _allocation_errors():
        return PhaseTrainer(config, kind, iterations, run, progress)


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


@contextmanager
def _writer_thread_errors_to_main() -> Iterator[None]:
    """Keep TensorBoard's writing thread from printing a traceback for an ``OSError`` (disk full): the thread
    hands the error to the main thread at its next call, which reports it in one line."""
    previous = threading.excepthook

    def hook(arguments: threading.ExceptHookArgs) -> None:
        writer_thread = arguments.thread is not None and type(arguments.thread).__module__.startswith("tensorboard")
        if not (writer_thread and issubclass(arguments.exc_type, OSError)):
            previous(arguments)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _no_memory(error: BaseException) -> str:
    return (
        f"this configuration needs more memory than there is ({first_line(error)[:120]}); lower hidden, filters, "
        "meta_batch_size, support/query sizes or image_size"
    )


class PhaseTrainer:
    """One phase (``maml`` or ``pretrained``) of a run: the learner, its optimiser and task sampler."""

    def __init__(self, config: TrainConfig, kind: str, iterations: int, run: RunDir, progress: bool) -> None:
        self.config, self.kind, self.iterations, self.run_dir, self.progress = config, kind, iterations, run, progress
        torch.manual_seed(model_seed(config.seed))  # the process's global generator: a run owns its process
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
        self.generator = seeds.generator(task_stream(config.seed, kind))
        self.iteration = 0
        self.elapsed = 0.0
        self.skipped_total = 0
        self.skipped_in_a_row = 0
        self.last_checkpoint: Path | None = None
        self.last_good: Path | None = None  # the newest checkpoint whose weights and loss were finite
        self.pending_good: Path | None = None  # the newest checkpoint, until the next step's loss is known
        self.digest = config_digest(config.model_dump())

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
            "config_digest": self.digest,
            "target": self.iterations,
            "compile_calls": self.learner.meta_gradient_calls,
            "last_good": str(self.last_good) if self.last_good is not None else None,
        }

    def load_state_dict(self, state: dict, path: Path) -> None:
        """Restore ``state`` (from the checkpoint ``path``); a ``CheckpointError`` if it does not fit this run."""
        check_config_digest(state, self.digest, path)
        load_module_state(self.learner, state.get("learner"), path)
        try:
            self.iteration = state["iteration"]
            self.elapsed = state["elapsed"]
            self.skipped_total = state["skipped_total"]
            self.skipped_in_a_row = state["skipped_in_a_row"]
            self.best_validation = state["best_validation"]
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["task_generator"])
            if self.step_rule is not None:
                self.step_rule.load_state_dict(state["step_rule"])
            restore_rng(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise CheckpointError(f"checkpoint {path} is incomplete or malformed ({first_line(error)})") from None
        self.learner.meta_gradient_calls = state.get("compile_calls", self.iteration)
        self.last_good = Path(state["last_good"]) if state.get("last_good") else None
        if self.iteration > self.iterations:
            raise ConfigError(
                f"{self.kind} has trained {self.iteration} iterations already, more than the {self.iterations} asked"
            )

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: StopFlag, resume: bool) -> None:
        """Train from the start (or the newest valid checkpoint) to ``iterations``; write the final checkpoint."""
        store = self.run_dir.checkpoints(self.kind, self.config.keep_checkpoints)
        if resume:
            found = newest_state(store, self.run_dir.checkpoint(self.kind), warn=_warn)
            if found is not None:
                self.load_state_dict(found[1], found[0])
                self.last_checkpoint = found[0]
                print(f"resumed {self.kind} at iteration {self.iteration} from {found[0]}", flush=True)
        truncate_metrics(self.run_dir.metrics(self.kind), self.iteration)
        ensure_folder(self.run_dir.root / "tensorboard")
        writer = SummaryWriter(
            log_dir=str(ensure_folder(self.run_dir.tensorboard(self.kind))), purge_step=self.iteration + 1
        )
        try:
            with _allocation_errors(), _writer_thread_errors_to_main():
                self._loop(stop, store, writer)
                writer.close()  # TensorBoard's writing thread reports its errors here
        except OSError as error:  # disk full, file size limit (ulimit -f), ...
            kept = (
                f"the newest checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else "no checkpoint"
            )
            raise WriteError(
                f"{self.kind}: cannot write to {self.run_dir.root} ({error.strerror or error}) at iteration "
                f"{self.iteration}; {kept}: free space, then continue with `torchmaml train --resume`"
            ) from None
        finally:
            with suppress(OSError):  # already reported
                writer.close()
        save_checkpoint(self.run_dir.checkpoint(self.kind), self.state_dict())

    def _loop(self, stop: StopFlag, store: CheckpointStore, writer: SummaryWriter) -> None:
        config = self.config
        with (
            open_metrics(self.run_dir.metrics(self.kind)) as log,
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
                self._check_weights()
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
                    self.pending_good = self.last_checkpoint  # good once the next step's loss is finite
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
            if self.pending_good is not None:  # the weights it holds gave a finite loss and meta-gradient
                self.last_good, self.pending_good = self.pending_good, None
            return
        self.pending_good = None
        self.skipped_total += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.config.max_consecutive_skips:
            raise DivergenceError(
                f"{self.kind} diverged: {self.skipped_in_a_row} meta-steps in a row had a non-finite loss or "
                f"meta-gradient (up to iteration {self.iteration}); {self._last_good()}"
            )

    def _check_weights(self) -> None:
        """Stop at once if the step left non-finite weights (its loss and meta-gradient were finite)."""
        with torch.no_grad():
            finite = bool(torch.stack([torch.isfinite(p).all() for p in self.learner.parameters()]).all())
        if not finite:
            raise DivergenceError(
                f"{self.kind} diverged: the meta-step of iteration {self.iteration} left non-finite weights; "
                f"{self._last_good()}"
            )

    def _newest_good(self) -> str:
        """The last good checkpoint if it is still on disk (``keep_checkpoints`` may have pruned it)."""
        if self.last_good is not None and Path(self.last_good).exists():
            return str(self.last_good)
        return "none kept" if self.last_good is not None else "none yet"

    def _last_good(self) -> str:
        return (
            f"last good checkpoint: {self._newest_good()}. Lower inner_lr or outer_lr and train again "
            "(a resume continues with the same configuration)"
        )


def _warn(message: str) -> None:
    print(f"torchmaml: warning: {message}", file=sys.stderr, flush=True)


__all__ = ["CheckpointError", "DivergenceError", "Interrupted", "PhaseTrainer", "train_run"]
