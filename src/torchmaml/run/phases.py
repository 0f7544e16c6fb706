"""A run folder's life, for every species: create it (or continue it), train its phases in order, plot.

A new run validates everything it can by building its first phase before it writes anything, refuses a
folder that holds a run unless ``overwrite`` (``torchmaml.run.folder``), then writes ``run.toml`` (its species,
``torchmaml.species``) and ``config.toml`` and trains every phase. ``resume=True`` continues the run under its
lock: the temporaries of killed writes are removed, a config that raises the iterations is saved (any other
change is refused), a run without ``run.toml`` (written before species were recorded) gains it, and each
phase that is not finished (``torchmaml.run.resume.phase_finished``) continues from its newest checkpoint.
SIGINT/SIGTERM are caught for the whole run (``torchmaml.run.signals``).

With a ``team`` of several processes, rank 0 alone checks, locks and writes the folder; a setup error on any
rank stops every rank (``Team.agree``), and which phases are finished is rank 0's answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Protocol

from pydantic import BaseModel

from torchmaml import species as registry
from torchmaml.checkpoint import config_digest
from torchmaml.errors import ConfigError
from torchmaml.run.files import write_atomic
from torchmaml.run.folder import check_new_run_folder, replace_run
from torchmaml.run.resume import phase_finished, remove_stale_temporaries
from torchmaml.run.signals import StopFlag, stop_requests
from torchmaml.run.team import SOLO, Team
from torchmaml.run.trainer import warn
from torchmaml.rundir import RunDir
from torchmaml.runlock import exclusive_run


class Phase(Protocol):
    """A built phase: ``run(stop, resume)`` trains it (a ``Trainer`` or a species' wrapper of one)."""

    def run(self, stop: StopFlag, resume: bool) -> None: ...


def train_phases(
    run: RunDir,
    config: BaseModel,
    phases: Sequence[tuple[str, int]],
    build: Callable[[str, int], Phase],
    *,
    species: str,
    resume: bool,
    overwrite: bool,
    saved: Callable[[], BaseModel],
    to_toml: Callable[[BaseModel], str],
    plot: Callable[[], None],
    team: Team = SOLO,
) -> None:
    """Train ``phases`` (``(kind, iterations)`` in order, each built by ``build``) of ``config`` in ``run``.

    ``saved()`` reads the run's own configuration (for a resume) and ``to_toml`` writes one (the species'
    layout of ``config.toml``); ``plot()`` draws the learning curves.
    """
    digest = config_digest(config.model_dump())
    writer = team.writer
    with stop_requests() as stop:
        if resume:
            with exclusive_run(run.root) if writer else nullcontext():

                def unfinished() -> list[bool]:
                    if not writer:
                        return []
                    _prepare_resume(run, config, saved(), species, to_toml)
                    limit = config.time_limit_minutes
                    return [not phase_finished(run.checkpoint(k), n, digest, warn, limit) for k, n in phases]

                todo = team.broadcast(team.agree(unfinished))
                for (kind, iterations), train in zip(phases, todo, strict=True):
                    if train:
                        build(kind, iterations).run(stop, resume=True)
                if writer:
                    plot()
            return

        def check_and_build() -> tuple[bool, Phase]:
            replacing = check_new_run_folder(run.root, overwrite) if writer else False  # writes nothing
            return replacing, build(*phases[0])  # validates before anything is written

        replacing, first = team.agree(check_and_build)
        if replacing:
            replace_run(run.root)
        with exclusive_run(run.root) if writer else nullcontext():
            if writer:
                write_atomic(run.config, to_toml(config).encode())  # first: a folder with config.toml is a run
                write_atomic(run.record, registry.record(species))
            first.run(stop, resume=False)
            for kind, iterations in phases[1:]:
                build(kind, iterations).run(stop, resume=False)
            if writer:
                plot()


def _prepare_resume(
    run: RunDir, config: BaseModel, saved: BaseModel, species: str, to_toml: Callable[[BaseModel], str]
) -> None:
    """Remove temporaries of killed writes; save ``config`` if it extends the run; record the species."""
    remove_stale_temporaries(run.root, report=lambda message: print(message, flush=True))
    if not os.path.lexists(run.record):
        write_atomic(run.record, registry.record(species))
    if config == saved:
        return
    if config_digest(config.model_dump()) != config_digest(saved.model_dump()):
        raise ConfigError(f"--resume continues {run.root} with its own config; only iterations can be raised")
    write_atomic(run.config, to_toml(config).encode())


__all__ = ["Phase", "train_phases"]
