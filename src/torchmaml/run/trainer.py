"""One training phase of any species: ``Trainer(step, state, hooks)`` runs ``step`` to the target iteration
count, checkpointing and resuming so that a run killed at any instant and resumed ends bit-identical.

A species supplies only

- ``step(iteration) -> metrics``: one iteration (``iteration`` is the 1-based number of the iteration it
  runs); a step whose numbers were not finite leaves the weights alone and says ``metrics["skipped"] = 1``;
- ``state``: everything else that step changes (weights, optimiser, its generators, counters), with
  ``state_dict()`` and ``load_state_dict(payload, path)`` (a ``CheckpointError`` if it does not fit);
- hooks (``torchmaml.run.hooks``) for the divergence guard, monitors, validation, the time limit,
  TensorBoard and the progress bar.

The trainer owns the rest. A checkpoint's payload is the runtime's fields (``kind``, ``iteration``,
``elapsed``, ``rng``: every global generator, ``config``, ``config_digest``, ``target``), each hook's and the
state's, side by side at its top level. Periodic checkpoints go to ``RUN_DIR/checkpoints`` every
``checkpoint_every`` iterations (the newest ``keep_checkpoints`` kept, ``torchmaml.checkpoint.CheckpointStore``),
the final one to ``checkpoint-<phase>.pt``. ``run(stop, resume=True)`` continues from the newest valid
checkpoint (one of another configuration refused) and truncates the metrics log (one JSON line per iteration:
``iteration``, the step's and hooks' metrics, ``seconds`` of training) to it, torn lines included.
SIGINT/SIGTERM (``stop``) finish the iteration, write a checkpoint and raise ``Interrupted``. A write that
fails (disk full) is one ``WriteError`` line naming the intact checkpoint.

With a ``team`` of several processes (``torchmaml.run.team``) every rank steps the same state; rank 0 alone
writes (checkpoints, metrics) and runs the hooks marked ``writer_only`` (monitors, validation, the time
limit, TensorBoard, the progress bar). A resume point is read by rank 0 and broadcast; signals and stop
reasons are decided together after every iteration; the ranks' states are compared at every checkpoint.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from torchmaml.checkpoint import CheckpointError, CheckpointStore, check_config_digest, config_digest, save_checkpoint
from torchmaml.errors import ConfigError, first_line
from torchmaml.rng import capture_rng, restore_rng
from torchmaml.run.files import WriteError
from torchmaml.run.hooks import Hook, Metrics, closing
from torchmaml.run.metrics_log import open_metrics, truncate_metrics
from torchmaml.run.resume import newest_state
from torchmaml.run.signals import Interrupted, StopFlag
from torchmaml.run.team import SOLO, Team
from torchmaml.rundir import RunDir

SECONDS_DIGITS = 4


class TrainingState(Protocol):
    """What a species' step changes, as plain data for a checkpoint."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None: ...


def warn(message: str) -> None:
    """A warning line on stderr (a bad checkpoint skipped, ...)."""
    print(f"torchmaml: warning: {message}", file=sys.stderr, flush=True)


class Trainer:
    """Runs ``step`` from iteration 0 (or a checkpoint) to ``iterations`` in phase ``kind`` of ``run``."""

    def __init__(
        self,
        step: Callable[[int], Metrics],
        state: TrainingState,
        hooks: Sequence[Hook] = (),
        *,
        run: RunDir,
        kind: str,
        iterations: int,
        config: BaseModel,
        checkpoint_every: int,
        keep_checkpoints: int,
        team: Team = SOLO,
    ) -> None:
        self.step, self.state, self.team = step, state, team
        self.hooks = [hook for hook in hooks if team.writer or not hook.writer_only]
        self.run_dir, self.kind, self.iterations, self.config = run, kind, iterations, config
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.digest = config_digest(config.model_dump())
        self.iteration = 0
        self.elapsed = 0.0  # seconds spent in steps (hooks' measurements are not counted)
        self.last_checkpoint: Path | None = None

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically, as plain data."""
        payload: dict[str, Any] = {
            "kind": self.kind,
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "rng": capture_rng(),
            "config": self.config.model_dump(),
            "config_digest": self.digest,
            "target": self.iterations,
        }
        for hook in self.hooks:
            payload.update(hook.state_dict())
        payload.update(self.state.state_dict())
        return payload

    def load_state_dict(self, payload: dict[str, Any], path: Path) -> None:
        """Continue from ``payload`` (the checkpoint ``path``); a ``CheckpointError`` if it does not fit."""
        check_config_digest(payload, self.digest, path)
        try:
            self.iteration = payload["iteration"]
            self.elapsed = payload["elapsed"] if "elapsed" in payload else payload["seconds"]  # "seconds": meta-RL's
            for hook in self.hooks:  # checkpoints before the shared runtime
                hook.load_state_dict(payload)
            self.state.load_state_dict(payload, path)
            restore_rng(payload["rng"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise CheckpointError(f"checkpoint {path} is incomplete or malformed ({first_line(error)})") from None
        if self.iteration > self.iterations:
            raise ConfigError(
                f"{self.kind} has trained {self.iteration} iterations already, more than the {self.iterations} asked"
            )

    def save(self, path: Path) -> None:
        """Write the state to ``path`` (a checkpoint outside the periodic ones, e.g. the best weights)."""
        save_checkpoint(path, self.state_dict())

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: StopFlag, resume: bool) -> None:
        """Train from the start (or the newest valid checkpoint) to ``iterations``; write the final checkpoint."""
        store = self.run_dir.checkpoints(self.kind, self.keep_checkpoints)
        final = self.run_dir.checkpoint(self.kind)
        team = self.team
        found = None
        if resume:  # rank 0 reads the run folder; the others receive what it found
            found = team.broadcast(team.agree(lambda: newest_state(store, final, warn=warn) if team.writer else None))
        if found is not None:
            self.load_state_dict(found[1], found[0])
            self.last_checkpoint = found[0]
            if team.writer:
                print(f"resumed {self.kind} at iteration {self.iteration} from {found[0]}", flush=True)
        if team.writer:
            truncate_metrics(self.run_dir.metrics(self.kind), self.iteration)
        try:
            with closing(self.hooks):
                for hook in self.hooks:
                    hook.start(self)
                self._loop(stop, store)
                for hook in self.hooks:
                    hook.close()  # TensorBoard's writing thread reports its errors here
        except OSError as error:  # disk full, file size limit (ulimit -f), ...
            newest = self.last_checkpoint
            kept = f"the newest checkpoint {newest} is intact" if newest else "no checkpoint"
            raise WriteError(
                f"{self.kind}: cannot write to {self.run_dir.root} ({error.strerror or error}) at iteration "
                f"{self.iteration}; {kept}: free space, then continue with `torchmaml train --resume`"
            ) from None
        if team.writer:
            self.save(final)

    def _loop(self, stop: StopFlag, store: CheckpointStore) -> None:
        team = self.team
        with open_metrics(self.run_dir.metrics(self.kind)) if team.writer else _NoLog() as log:
            while self.iteration < self.iterations:
                started = time.perf_counter()
                with team.collective(f"iteration {self.iteration + 1}"):  # its all-reduces
                    metrics = self.step(self.iteration + 1)
                self.iteration += 1
                self.elapsed += time.perf_counter() - started
                for hook in self.hooks:
                    hook.after_step(self, metrics)
                record = {"iteration": self.iteration, **metrics, "seconds": round(self.elapsed, SECONDS_DIGITS)}
                log.write(json.dumps(record) + "\n")
                for hook in self.hooks:
                    hook.after_record(self, metrics)
                reason = next((r for hook in self.hooks if (r := hook.stop_reason(self, metrics))), None)
                signalled, stopping = team.any(stop.signal_number is not None, reason is not None)
                if self.iteration % self.checkpoint_every == 0 or signalled:
                    log.flush()
                    team.same(self.state.state_dict(), f"{self.kind} iteration {self.iteration}")
                    if team.writer:
                        self.last_checkpoint = store.save(self.iteration, self.state_dict())
                    else:
                        self.last_checkpoint = store.path(self.iteration)
                    for hook in self.hooks:
                        hook.checkpointed(self, self.last_checkpoint)
                if signalled:
                    raise Interrupted(stop.signal_number or signal.SIGTERM, self.last_checkpoint)
                if stopping:
                    if team.writer:
                        print(f"{self.kind}: {reason} at iteration {self.iteration}; stopping", flush=True)
                    break
            log.flush()


class _NoLog:
    """The metrics log of a rank that does not write (rank 0 does)."""

    def __enter__(self) -> _NoLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, text: str) -> None:
        return None

    def flush(self) -> None:
        return None


__all__ = ["Trainer", "TrainingState", "warn"]
