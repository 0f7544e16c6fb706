"""The JSONL metrics of a phase (one line per iteration), safe against crashes.

A process killed while appending can leave a torn last line; a run resumed from an older checkpoint has
lines past that checkpoint. :func:`truncate_metrics` keeps the complete records up to the checkpoint's
iteration and drops everything after the first torn or later one, so a resumed run appends where its
checkpoint left off and the log never has gaps or duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from torchmaml.run.files import open_append, read_regular, write_atomic

MAX_METRICS_BYTES = 1 << 32  # a phase logs a few hundred bytes per iteration


def complete_records(data: bytes) -> list[tuple[dict, bytes]]:
    """The records of a JSONL log with their lines, up to the first line that is torn or not a JSON object."""
    records = []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn (or empty)
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
            break
        records.append((record, line + b"\n"))
    return records


def truncate_metrics(path: Path, iteration: int) -> None:
    """Keep the complete records of iterations ``1..iteration`` in order; drop the rest (written atomically)."""
    try:
        data = read_regular(path, MAX_METRICS_BYTES)
    except FileNotFoundError:
        return
    kept = []
    for expected, (record, line) in enumerate(complete_records(data), start=1):
        if record["iteration"] != expected or expected > iteration:
            break
        kept.append(line)
    write_atomic(path, b"".join(kept))


def read_records(path: Path) -> list[dict]:
    """The complete records of the log at ``path`` (empty if it does not exist)."""
    try:
        return [record for record, _ in complete_records(read_regular(path, MAX_METRICS_BYTES))]
    except FileNotFoundError:
        return []


def open_metrics(path: Path) -> TextIO:
    """The log opened for appending (never through a link)."""
    return open_append(path)
