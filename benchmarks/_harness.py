"""Shared by the benchmark scripts that drive ``torchmaml`` runs as child processes.

Each ``torchmaml train``/``evaluate`` runs in a child of its own, with ``OMP_NUM_THREADS`` set, its output in a
log file; the peak resident set size of that one child comes from ``os.wait4`` (``getrusage(RUSAGE_CHILDREN)``
keeps the largest child so far, so it would not separate the runs).
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TORCHMAML = Path(sys.executable).parent / "torchmaml"


def run_child(
    command: list[str],
    log: Path,
    threads: int | None,
    *,
    append: bool = False,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, float, float]:
    """Run ``command`` as one child process (output to ``log``, appended with ``append``); return its exit code,
    wall seconds and the peak resident set size of that child in MB (``ru_maxrss`` from ``os.wait4``, KiB on
    Linux). ``threads`` sets the child's ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (``None``: this process's);
    ``extra_env`` adds variables."""
    env = {**os.environ, **(extra_env or {})}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    with open(log, "a" if append else "w") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    rss = usage.ru_maxrss / 2**20 if sys.platform == "darwin" else usage.ru_maxrss / 2**10
    return process.returncode, time.perf_counter() - start, rss


def read_metrics(run: Path, phase: str = "maml") -> list[dict[str, Any]]:
    """The per-iteration records of a run's ``metrics-<phase>.jsonl``."""
    path = run / f"metrics-{phase}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seconds_per_iteration(records: list[dict[str, Any]]) -> float:
    """Mean training seconds per iteration, leaving out the first iteration when there are more."""
    if len(records) > 1:
        return (records[-1]["seconds"] - records[0]["seconds"]) / (len(records) - 1)
    return records[-1]["seconds"]


def last_error_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def fresh(path: Path) -> Path:
    """An empty run folder (a previous run of the same name is removed)."""
    if path.exists():
        shutil.rmtree(path)
    return path


def names(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (a comma-separated command-line list)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def read_json_line(log: Path) -> dict[str, Any] | None:
    """The last line of ``log`` that is a JSON object (a child's result), or ``None`` if there is none."""
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
