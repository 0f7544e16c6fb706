"""SIGINT/SIGTERM during training: finish the iteration, write a stop checkpoint, exit ``128 + signal``.

The first signal sets a flag that the training loop checks after each iteration. A second signal stops at
once with :class:`Interrupted` (no new checkpoint; the newest periodic one is intact), which the command
line reports in one line instead of a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; ``checkpoint`` is the stop checkpoint (``None``: a second signal
    stopped it at once, the newest periodic checkpoint is the one to resume from)."""

    def __init__(self, signal_number: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by signal {signal_number}; checkpoint {checkpoint}")
        self.signal_number = signal_number
        self.checkpoint = checkpoint


class StopFlag:
    """Set by the first SIGINT/SIGTERM; a second one raises :class:`Interrupted` at once."""

    signal_number: int | None = None

    def request(self, number: int, _frame: object) -> None:
        if self.signal_number is not None:
            raise Interrupted(number, None)
        self.signal_number = number


@contextmanager
def stop_requests() -> Iterator[StopFlag]:
    """While active, SIGINT and SIGTERM set a flag instead of killing the process (main thread only)."""
    flag = StopFlag()
    handled = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {sig: signal.signal(sig, flag.request) for sig in handled}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
