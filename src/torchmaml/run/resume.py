"""What a resume finds in a run folder: temporaries of killed writes, and whether a phase is finished.

A phase is finished when its final checkpoint ``checkpoint-<phase>.pt`` loads, comes from a run of the same
configuration and was written for at least the iterations now asked for (more iterations extend the run). A
final checkpoint that does not load is reported and set aside (``.corrupt``, nothing is deleted), so the phase
continues from its newest good periodic checkpoint instead of passing for finished.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchmaml.checkpoint import CheckpointError, check_config_digest, load_checkpoint
from torchmaml.run.files import remove_temporaries


def remove_stale_temporaries(root: Path, report: Callable[[str], None]) -> None:
    """Delete the temporary files that killed writes left in the run folder and its ``checkpoints``."""
    for folder in (Path(root), Path(root) / "checkpoints"):
        for path in remove_temporaries(folder):
            report(f"removed {path}, the temporary file of an interrupted write")


def phase_finished(final: Path, iterations: int, digest: str, warn: Callable[[str], None]) -> bool:
    """Whether the phase whose final checkpoint is ``final`` has trained ``iterations`` with this config."""
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
    return isinstance(target, int) and target >= iterations
