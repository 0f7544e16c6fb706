"""What a resume finds in a run folder: temporaries of killed writes, whether a phase is finished, the
checkpoint to continue from; and the ``--set`` overrides a resume accepts (those that extend the run).

A phase is finished when its final checkpoint ``checkpoint-<phase>.pt`` loads, comes from a run of the same
configuration and was written for at least the iterations now asked for (more iterations extend the run). A
final checkpoint that does not load is reported and set aside (``.corrupt``, nothing is deleted), so the phase
continues from its newest good periodic checkpoint instead of passing for finished.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchmaml.checkpoint import CheckpointError, CheckpointStore, check_config_digest, load_checkpoint
from torchmaml.errors import ConfigError
from torchmaml.run.config_io import parse_override
from torchmaml.run.files import remove_temporaries


def remove_stale_temporaries(root: Path, report: Callable[[str], None]) -> None:
    """Delete the temporary files that killed writes left in the run folder and its ``checkpoints``."""
    for folder in (Path(root), Path(root) / "checkpoints"):
        for path in remove_temporaries(folder):
            report(f"removed {path}, the temporary file of an interrupted write")


def phase_finished(
    final: Path, iterations: int, digest: str, warn: Callable[[str], None], time_limit_minutes: float | None = None
) -> bool:
    """Whether the phase whose final checkpoint is ``final`` has trained ``iterations`` with this config: it
    reached them, or a hook ended it earlier, except for a time limit that ``time_limit_minutes`` has raised
    (or removed) since."""
    if not os.path.lexists(final):
        return False
    try:
        payload = load_checkpoint(final)
    except CheckpointError as error:
        aside = final.with_name(f"{final.name}.corrupt")
        os.replace(final, aside)
        warn(f"{error}; set it aside as {aside.name}, the phase continues from its newest good periodic checkpoint")
        return False
    check_config_digest(payload, digest, final)
    target = payload.get("target", payload.get("iteration"))
    if payload.get("time_limited") and (time_limit_minutes is None or payload["elapsed"] < 60 * time_limit_minutes):
        return False
    return isinstance(target, int) and target >= iterations


def newest_state(
    store: CheckpointStore, final: Path, warn: Callable[[str], None]
) -> tuple[Path, dict[str, Any]] | None:
    """The newest valid periodic checkpoint, or the final one if it is newer (a finished phase extended;
    :func:`phase_finished` has checked the final checkpoint before)."""
    found = store.newest_valid(warn=warn)
    if os.path.lexists(final):
        payload = load_checkpoint(final)
        if found is None or payload.get("iteration", 0) > found[1].get("iteration", 0):
            return final, payload
    return found


def extended(values: dict[str, Any], overrides: list[str], keys: tuple[str, ...]) -> dict[str, Any]:
    """``values`` (a run's saved configuration) with ``--set`` overrides of ``keys`` only; others refused."""
    values = dict(values)
    for text in overrides:
        key, value = parse_override(text)
        if key not in keys:
            raise ConfigError(
                f"--resume continues a run with its own config: --set can raise {', '.join(keys[:-1])} or {keys[-1]} "
                f"(to extend the run), not {key}"
            )
        values[key] = value
    return values
