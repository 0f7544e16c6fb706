"""Checkpoints that survive crashes and can never run code.

File format: one header line ``TORCHMAML-CHECKPOINT 1 <sha256 of the body>\\n`` followed by the body, the
bytes of ``torch.save(payload)``. Saving writes a temporary file in the same folder, fsyncs it and
renames it over the target (atomic on POSIX), so a crash leaves either the old file or the new one.
Loading verifies the checksum before unpickling and unpickles with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from torchmaml.errors import TorchMAMLError

MAGIC = b"TORCHMAML-CHECKPOINT 1 "


class CheckpointError(TorchMAMLError):
    """A checkpoint is missing, truncated, corrupted, or holds something other than plain data."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; a run folder's files are for sharing
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
    except OSError as error:
        raise CheckpointError(
            f"could not write checkpoint {path}: {error.strerror or error}; nothing was overwritten"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify a checkpoint; a ``CheckpointError`` naming the file if anything is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
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

    def save(self, iteration: int, payload: dict[str, Any]) -> Path:
        """Write the checkpoint of ``iteration``, verify it, then drop all but the newest ``keep``."""
        path = self.folder / f"{self.prefix}-{iteration:09d}.pt"
        previous = self.paths()
        try:
            save_checkpoint(path, payload)
            load_checkpoint(path)
        except CheckpointError as error:
            intact = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint"
            raise CheckpointError(f"{error}; {intact}") from None
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def newest_valid(self, warn=None) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads and verifies, with its payload; ``warn`` hears of bad ones."""
        for path in reversed(self.paths()):
            try:
                return path, load_checkpoint(path)
            except CheckpointError as error:
                if warn is not None:
                    warn(f"{error}; falling back to an older checkpoint")
        return None
