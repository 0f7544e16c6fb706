"""One training process per run folder: an exclusive lock on ``RUN_DIR/.lock`` (``filelock``).

Two trainers writing the same folder would interleave metrics and checkpoints (a resume started while the
first run is still going is the usual way to get there). ``train`` holds the lock for its whole run; a second
one fails at once with a message naming the holder's process id, which the holder writes into the lock file.
The operating system drops the lock with the process, however it exits, so a crash never leaves a stale lock.
``filelock`` opens the lock file with ``O_NOFOLLOW`` and never truncates it; a ``.lock`` that is a symbolic
link or not a regular file (a run folder from someone else) is refused before anything is opened.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from torchmaml.errors import ConfigError
from torchmaml.run.files import UnsafePathError, WriteError, check_destination, read_regular

LOCK_NAME = ".lock"


def _write_pid(handle: int) -> None:
    pid = str(os.getpid()).encode()
    os.pwrite(handle, pid, 0)
    os.ftruncate(handle, len(pid))


def _holder(path: Path) -> str:
    try:
        return read_regular(path, 64).decode(errors="replace").strip() or "unknown"
    except (OSError, UnsafePathError):
        return "unknown"


@contextmanager
def exclusive_run(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` for the block; a one-line ``ConfigError`` if another process holds it."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)  # the run folder itself may be a link the user made
    except OSError as error:
        raise WriteError(f"cannot create the folder {root}: {error.strerror or error}") from None
    path = root / LOCK_NAME
    check_destination(path)
    lock = FileLock(path, timeout=0, preserve_lock_file=True, on_acquired=_write_pid)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"{root} is being trained by another process (pid {_holder(path)}); wait for it to finish or stop it "
            "(Ctrl-C / SIGTERM writes a checkpoint), or train into another folder"
        ) from None
    except OSError as error:  # ELOOP: the lock file became a link after the check
        raise UnsafePathError(f"cannot lock {path}: {error.strerror or error}; remove it and retry") from None
    try:
        yield
    finally:
        lock.release()
