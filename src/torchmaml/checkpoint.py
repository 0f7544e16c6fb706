"""Checkpoints that survive crashes and can never run code.

File format: one header line ``TORCHMAML-CHECKPOINT 1 <sha256 of the body>\\n`` followed by the body, the
bytes of ``torch.save(payload)``. Saving writes a temporary file in the same folder (never through a
symbolic link, ``torchmaml.run.files``), fsyncs it and renames it over the target (atomic on POSIX), so a crash
leaves either the old file or the new one. Loading reads regular files only, of at most ``MAX_CHECKPOINT_BYTES``,
verifies the checksum before unpickling and unpickles with ``weights_only=True``.

A training checkpoint records ``config_digest`` (:func:`config_digest`: the run's configuration but for the
keys that may change on resume); resuming from a checkpoint of another configuration is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchmaml.errors import TorchMAMLError, first_line
from torchmaml.run.files import UnsafePathError, WriteError, ensure_folder, read_regular, remove_temporaries
from torchmaml.run.files import write_atomic as atomic_write_bytes

MAGIC = b"TORCHMAML-CHECKPOINT 1 "
MAX_CHECKPOINT_BYTES = 1 << 34  # 16 GiB: far above any model torchmaml trains, far below /dev/zero
RESUMABLE_KEYS = ("iterations", "pretrained_iterations", "time_limit_minutes")
# Config keys renamed since checkpoints recorded digests, hashed under their first names so that a checkpoint
# of an earlier release still matches its run's configuration (supervised ``baseline`` -> ``pretrained_baseline``,
# meta-RL ``baseline`` -> ``value_baseline``; both species' ``baseline_lr_grid`` -> ``pretrained_lr_grid``).
DIGEST_NAMES = {
    "pretrained_baseline": "baseline",
    "value_baseline": "baseline",
    "pretrained_lr_grid": "baseline_lr_grid",
}

# Config keys added since checkpoints recorded digests, with the values they then implicitly had: left out of the
# digest while they hold those values, so a checkpoint of an earlier release still matches its run's configuration.
DIGEST_ADDED_KEYS: dict[str, Any] = {
    "language_group": "all",
    "words_per_class": 300,
    "max_length": 16,
    "text_model": "gru",
    "text_embedding": 32,
    "text_hidden": 64,
    "text_heads": 2,
    "text_layers": 1,
    "policy_dtype": "float32",  # meta-RL
    "sampler": "batched",  # meta-RL: the same episodes as the gymnasium sampler of earlier releases
    "frame_skip": None,  # meta-RL half-cheetah: gymnasium's 5, as before the key
    "hessian_size": 0,
    "train_tasks": 0,
    "theory_every": 100,  # runs of earlier releases, which estimated L and rho once, continue with the refresh
    "particles": 0,
    "inner_update": "gradient",
    "prior_std": 1.0,
    "noise_std": None,
    "noise_init_std": 1.0,
    "phase_range": [0.0, math.pi],
    "frequency_range": [1.0, 1.0],
    "noise_fraction": 0.0,
}
_ABSENT = object()


class CheckpointError(TorchMAMLError):
    """A checkpoint is missing, truncated, corrupted, or holds something other than plain data."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Serialise ``payload`` (tensors, numbers, strings, lists, dicts) atomically with a checksum.

    If the write fails (disk full, ...), whatever was at ``path`` before is left as it was.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode()
    try:
        atomic_write_bytes(Path(path), MAGIC + digest + b"\n" + body)
    except WriteError as error:
        raise CheckpointError(f"could not write checkpoint: {error}; nothing was overwritten") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify a checkpoint; a ``CheckpointError`` naming the file if anything is wrong."""
    path = Path(path)
    try:
        data = read_regular(path, MAX_CHECKPOINT_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except UnsafePathError as error:
        raise CheckpointError(str(error)) from None
    header, newline, body = data.partition(b"\n")
    if not newline or not header.startswith(MAGIC):
        raise CheckpointError(f"checkpoint {path} is not a torchmaml checkpoint (bad header)")
    expected = header[len(MAGIC) :].decode(errors="replace")
    if hashlib.sha256(body).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated (checksum mismatch)")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler refuses anything but plain data
        raise CheckpointError(f"checkpoint {path} holds objects that are not plain data: {error}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, expected a dict")
    return payload


def config_digest(values: dict[str, Any]) -> str:
    """sha256 of a configuration (``model_dump()``) without ``RESUMABLE_KEYS``, which a resume may change, nor the
    ``DIGEST_ADDED_KEYS`` at their first values, its keys named as in ``DIGEST_NAMES``."""
    kept = {
        DIGEST_NAMES.get(key, key): value
        for key, value in values.items()
        if key not in RESUMABLE_KEYS and DIGEST_ADDED_KEYS.get(key, _ABSENT) != value
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def check_config_digest(payload: dict[str, Any], digest: str, path: Path) -> None:
    """Refuse a checkpoint written by a run of another configuration (its digest, or its saved config)."""
    found = payload.get("config_digest")
    if found is None and isinstance(payload.get("config"), dict):  # written before digests: its saved config,
        from torchmaml.config import build_config  # completed with the keys added since (their defaults)

        try:
            found = config_digest(build_config(payload["config"]).model_dump())
        except TorchMAMLError:
            found = config_digest(payload["config"])
    if found != digest:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with another configuration; refusing to resume from it: "
            "move it out of the run folder, or train into a new folder"
        )


def load_module_state(module: nn.Module, state: Any, path: Path) -> None:
    """``module.load_state_dict(state)`` with a one-line ``CheckpointError`` if the state does not fit."""
    try:
        module.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's model ({first_line(error)}); it was written for another "
            "configuration"
        ) from None


class CheckpointStore:
    """The periodic checkpoints of one training phase: ``<folder>/<prefix>-<iteration>.pt``, newest ``keep``.

    A new checkpoint is read back and verified before older ones are removed, so a good checkpoint is
    always on disk.
    """

    def __init__(self, folder: Path, prefix: str, keep: int) -> None:
        self.folder, self.prefix, self.keep = Path(folder), prefix, keep

    def paths(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        return sorted(self.folder.glob(f"{self.prefix}-*.pt"))

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files of writes that a kill cut short."""
        return remove_temporaries(self.folder)

    def path(self, iteration: int) -> Path:
        """Where the checkpoint of ``iteration`` is (or would be) written."""
        return self.folder / f"{self.prefix}-{iteration:09d}.pt"

    def save(self, iteration: int, payload: dict[str, Any]) -> Path:
        """Write the checkpoint of ``iteration``, verify it, then drop all but the newest ``keep``."""
        path = self.path(iteration)
        previous = self.paths()
        try:
            ensure_folder(self.folder)
            save_checkpoint(path, payload)
            load_checkpoint(path)
        except (CheckpointError, WriteError, UnsafePathError) as error:
            intact = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint"
            raise CheckpointError(f"{error}; {intact}") from None
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def newest_valid(self, warn: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads and verifies, with its payload; ``warn`` hears of bad ones."""
        for path in reversed(self.paths()):
            try:
                return path, load_checkpoint(path)
            except CheckpointError as error:
                if warn is not None:
                    warn(f"{error}; falling back to an older checkpoint")
        return None


__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "atomic_write_bytes",
    "check_config_digest",
    "config_digest",
    "load_checkpoint",
    "load_module_state",
    "save_checkpoint",
]
