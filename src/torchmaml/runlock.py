"""One training process per run folder: an exclusive advisory lock on ``RUN_DIR/.lock``.

Two trainers writing the same folder would interleave metrics and checkpoints (a resume started while the
first run is still going is the usual way to get there). ``train`` holds the lock for its whole run; a second
one fails at once with a message naming the holder's process id. The lock is released when the process exits,
however it exits (the operating system drops ``flock`` locks with the file descriptor), so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchmaml.errors import ConfigError

LOCK_NAME = ".lock"


@contextmanager
def exclusive_run(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` for the block; a one-line ``ConfigError`` if another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"{root} is being trained by another process (pid {holder}); wait for it to finish or stop it "
                "(Ctrl-C / SIGTERM writes a checkpoint), or train into another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
