"""The bookkeeping around a training step, as small hooks of :class:`torchmaml.run.trainer.Trainer`.

A hook is told of each stage of an iteration; every method does nothing unless overridden. After the
species' step: :meth:`Hook.after_step` (may add metrics or raise), the metrics line is written, then
:meth:`Hook.after_record`; :meth:`Hook.checkpointed` hears of each periodic checkpoint and
:meth:`Hook.stop_reason` may end the phase early (its final checkpoint is written). A hook's
:meth:`Hook.state_dict` travels in every checkpoint, so a resumed run continues it.

- :class:`DivergenceGuard`: a non-finite step is skipped by the species (``metrics["skipped"]``); after
  ``max_skips`` in a row, or a step that leaves non-finite weights, a :class:`DivergenceError` naming the last
  good checkpoint (the newest one whose weights were finite and whose next step was finite).
- :class:`Every`: every ``every`` iterations, add the metrics a measurement returns (a monitor).
- :class:`Validation`: every ``every`` iterations, a validation score; the best weights so far are kept.
- :class:`TimeLimit`: stop once the phase has trained for ``minutes``.
- :class:`TensorBoard`: the metrics as scalars ``<phase>/<name>`` (optional extra: nothing without it).
- :class:`Progress`: the tqdm progress bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tqdm.auto import tqdm

from torchmaml.errors import TorchMAMLError
from torchmaml.extras import SummaryWriter  # tensorboard is optional (an extra)
from torchmaml.run.files import ensure_folder

if TYPE_CHECKING:
    from torchmaml.run.trainer import Trainer

Metrics = dict[str, float]


class DivergenceError(TorchMAMLError):
    """Too many consecutive steps were non-finite, or a step left non-finite weights."""


class Hook:
    """A part of the loop's bookkeeping; the trainer calls each method at its stage of every iteration.

    ``writer_only`` hooks (monitors, files, the screen) run on rank 0 alone when several processes train one
    run; the others (the divergence guard) run on every rank, since they change what every rank does.
    """

    writer_only: ClassVar[bool] = False

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this hook (its keys share the checkpoint's top level)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's payload (``KeyError``/``TypeError`` if it lacks this hook's keys)."""

    def start(self, trainer: Trainer) -> None:
        """Before the first step of this process (after a resume has restored the state)."""

    def after_step(self, trainer: Trainer, metrics: Metrics) -> None:
        """After the step of ``trainer.iteration``: add to ``metrics``, or raise to stop the run."""

    def after_record(self, trainer: Trainer, metrics: Metrics) -> None:
        """After the metrics line of ``trainer.iteration`` is written."""

    def checkpointed(self, trainer: Trainer, path: Path) -> None:
        """A periodic checkpoint was written to ``path``."""

    def stop_reason(self, trainer: Trainer, metrics: Metrics) -> str | None:
        """Why the phase should stop now (``"time limit ... reached"``), or ``None`` to go on."""
        return None

    def close(self) -> None:
        """The loop is over (also after an error); may be called twice, so it must be idempotent."""


class DivergenceGuard(Hook):
    """Stop a run that diverged, naming the newest checkpoint worth going back to.

    ``weights`` gives the trained tensors; ``what`` names a skipped step's trouble (``a non-finite loss or
    meta-gradient``) and ``advice`` what to change.
    """

    def __init__(self, max_skips: int, weights: Callable[[], Iterable[torch.Tensor]], *, what: str, advice: str):
        self.max_skips, self.weights, self.what, self.advice = max_skips, weights, what, advice
        self.skipped_total = 0
        self.skipped_in_a_row = 0
        self.last_good: Path | None = None  # the newest checkpoint whose weights and next step were finite
        self.pending_good: Path | None = None  # the newest checkpoint, until the next step's outcome is known

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_total": self.skipped_total,
            "skipped_in_a_row": self.skipped_in_a_row,
            "last_good": str(self.last_good) if self.last_good is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_total = state.get("skipped_total", 0)  # meta-RL checkpoints before the shared runtime
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)
        self.last_good = Path(state["last_good"]) if state.get("last_good") else None

    def after_step(self, trainer: Trainer, metrics: Metrics) -> None:
        self._count_skips(trainer, metrics)
        with torch.no_grad():
            finite = bool(torch.stack([torch.isfinite(w).all() for w in self.weights()]).all())
        if not finite:
            raise DivergenceError(
                f"{trainer.kind} diverged: the meta-step of iteration {trainer.iteration} left non-finite weights; "
                f"{self._last_good()}"
            )

    def _count_skips(self, trainer: Trainer, metrics: Metrics) -> None:
        if not metrics.get("skipped"):
            self.skipped_in_a_row = 0
            if self.pending_good is not None:  # the weights it holds gave a finite step
                self.last_good, self.pending_good = self.pending_good, None
            return
        self.pending_good = None
        self.skipped_total += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.max_skips:
            raise DivergenceError(
                f"{trainer.kind} diverged: {self.skipped_in_a_row} meta-steps in a row had {self.what} (up to "
                f"iteration {trainer.iteration}); {self._last_good()}"
            )

    def checkpointed(self, trainer: Trainer, path: Path) -> None:
        self.pending_good = path  # good once the next step is finite

    def _last_good(self) -> str:
        if self.last_good is None:
            kept = "none yet"
        else:  # keep_checkpoints may have pruned it
            kept = str(self.last_good) if Path(self.last_good).exists() else "none kept"
        return (
            f"last good checkpoint: {kept}. {self.advice} and train again (a resume continues with the same "
            "configuration)"
        )


class Every(Hook):
    """Every ``every`` iterations (0: never), add the metrics ``measure()`` returns."""

    writer_only = True

    def __init__(self, every: int, measure: Callable[[], Metrics]) -> None:
        self.every, self.measure = every, measure

    def after_step(self, trainer: Trainer, metrics: Metrics) -> None:
        if self.every and trainer.iteration % self.every == 0:
            metrics.update(self.measure())


class Validation(Hook):
    """Every ``every`` iterations (0: never), ``val_<name>`` = ``score()``; the trainer's state is saved to
    ``best`` whenever the score is the best so far (higher or lower, as ``higher_is_better``)."""

    writer_only = True

    def __init__(self, every: int, score: Callable[[], float], *, name: str, higher_is_better: bool, best: Path):
        self.every, self.score, self.name, self.higher_is_better, self.best = every, score, name, higher_is_better, best
        self.best_validation: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best_validation": self.best_validation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_validation = state["best_validation"]

    def after_step(self, trainer: Trainer, metrics: Metrics) -> None:
        if not self.every or trainer.iteration % self.every:
            return
        value = self.score()
        best = self.best_validation
        if best is None or (value > best if self.higher_is_better else value < best):
            self.best_validation = value
            trainer.save(self.best)
        metrics[f"val_{self.name}"] = value


class TimeLimit(Hook):
    """Stop the phase once it has trained ``minutes`` (``None``: no limit); its final checkpoint is written and
    records ``time_limited``, so that a resume with a raised limit trains on (``resume.phase_finished``)."""

    writer_only = True

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.stopped = False

    def state_dict(self) -> dict[str, Any]:
        return {"time_limited": self.stopped}

    def stop_reason(self, trainer: Trainer, metrics: Metrics) -> str | None:
        if self.minutes is not None and trainer.elapsed >= 60 * self.minutes:
            self.stopped = True
            return f"time limit of {self.minutes} minutes reached"
        return None


class TensorBoard(Hook):
    """The metrics as TensorBoard scalars ``<phase>/<name>`` on the iterations ``logged(iteration)`` picks,
    in ``folder``; without the extra nothing is written (one note on stderr)."""

    writer_only = True

    def __init__(self, folder: Path, logged: Callable[[int], bool] = lambda iteration: True) -> None:
        self.folder, self.logged = Path(folder), logged
        self.writer: Any = None
        self.previous_hook: Callable[[threading.ExceptHookArgs], Any] | None = None

    def start(self, trainer: Trainer) -> None:
        ensure_folder(self.folder.parent)
        self.previous_hook = threading.excepthook
        threading.excepthook = self._hook
        self.writer = SummaryWriter(log_dir=str(ensure_folder(self.folder)), purge_step=trainer.iteration + 1)

    def after_record(self, trainer: Trainer, metrics: Metrics) -> None:
        if self.logged(trainer.iteration):
            for name, value in metrics.items():
                self.writer.add_scalar(f"{trainer.kind}/{name}", value, trainer.iteration)

    def close(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()  # the writing thread reports its errors here
        finally:
            if self.previous_hook is not None:
                threading.excepthook, self.previous_hook = self.previous_hook, None

    def _hook(self, arguments: threading.ExceptHookArgs) -> None:
        """Keep TensorBoard's writing thread from printing a traceback for an ``OSError`` (disk full): the
        thread hands the error to the main thread at its next call, which reports it in one line."""
        writer_thread = arguments.thread is not None and type(arguments.thread).__module__.startswith("tensorboard")
        if not (writer_thread and issubclass(arguments.exc_type, OSError)) and self.previous_hook is not None:
            self.previous_hook(arguments)


class Progress(Hook):
    """The progress bar (hidden unless ``show``); ``postfix(metrics)`` gives its figures (``None``: keep)."""

    writer_only = True

    def __init__(self, show: bool, postfix: Callable[[Metrics], dict[str, str] | None]) -> None:
        self.show, self.postfix = show, postfix
        self.bar: Any = None

    def start(self, trainer: Trainer) -> None:
        self.bar = tqdm(
            total=trainer.iterations,
            initial=trainer.iteration,
            desc=f"train {trainer.kind}",
            disable=not self.show,
            unit="it",
            dynamic_ncols=True,
        )

    def after_record(self, trainer: Trainer, metrics: Metrics) -> None:
        figures = self.postfix(metrics)
        if figures is not None:
            self.bar.set_postfix(**figures)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def closing(hooks: Iterable[Hook]) -> Iterator[None]:
    """Close every hook when the block ends, however it ends."""
    try:
        yield
    finally:
        for hook in hooks:
            with suppress(OSError):  # reported by the first close, inside the block
                hook.close()


__all__ = [
    "DivergenceError",
    "DivergenceGuard",
    "Every",
    "Hook",
    "Progress",
    "TensorBoard",
    "TimeLimit",
    "Validation",
    "closing",
]
