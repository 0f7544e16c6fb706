"""Peak memory and time of one meta-step against the number of inner steps, for every estimator.

The workload is Omniglot-shaped 5-way 1-shot classification: ``conv4(ways=5)`` on random normal
[1, 28, 28] images, cross entropy, ``--meta-batch`` tasks (default 4, to keep it practical on a CPU) of
5 support + 75 query images, inner_lr 0.4, Adam lr 1e-3, strategy ``"loop"`` (one task at a time, so the
memory is one task's), each estimator with its default options (``three_batch`` has no separate Hessian
batch here, so it takes ``D_h = D_in``). The same initial weights and the same task batch are used
for every configuration.

Each (estimator, inner steps) configuration runs in a fresh subprocess of its own, which reports:

* peak memory: the process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) at the end,
  minus the same just before the first meta-step (model, learner and data built): what the meta-steps
  themselves needed;
* ms per meta-step: the median wall time of ``meta_step`` over the timed iterations, after untimed
  warm-up ones.

Expected: ``unrolled`` grows linearly with the inner steps (it keeps every step's activations for the
backward pass); ``unrolled+checkpoint`` (``estimator_options={"checkpoint": True}``: the same exact gradient,
recomputing each step in reverse) stays flat at about one step's cost; ``first_order``, ``hessian_free``,
``implicit``, ``reptile`` stay flat; ``three_batch`` keeps two parameter copies per step (``w_s`` and
``g_s``, about 0.9 MB for conv4): nearly flat. Most of the memory of every row is the forward and backward
pass of the 75 query images, the same for all.

Run from the repository root (the full table takes a while: ``unrolled`` with 20 steps is the slowest)::

    .venv/bin/python benchmarks/memory.py
    .venv/bin/python benchmarks/memory.py --estimators unrolled,implicit --steps 1,5 --threads 1
    .venv/bin/python benchmarks/memory.py --steps 1,2 --meta-batch 1 --warmup 0 --iterations 1   # a smoke test

The markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from _harness import max_rss_mb

# name -> (estimator, estimator_options); "unrolled+checkpoint" is the exact gradient with the inner loop
# recomputed in reverse (gradient checkpointing), which trades time for memory.
ESTIMATOR_SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "unrolled": ("unrolled", {}),
    "unrolled+checkpoint": ("unrolled", {"checkpoint": True}),
    "first_order": ("first_order", {}),
    "hessian_free": ("hessian_free", {}),
    "implicit": ("implicit", {}),
    "reptile": ("reptile", {}),
    "three_batch": ("three_batch", {}),
}
ESTIMATORS = tuple(ESTIMATOR_SETTINGS)
STEPS = (1, 5, 10, 20)
WAYS, QUERIES_PER_CLASS, INNER_LR = 5, 15, 0.4
MODEL_SEED, DATA_SEED = 0, 1


@dataclass(frozen=True)
class Config:
    """One measured configuration, as passed from the parent to its child process."""

    estimator: str
    steps: int
    meta_batch: int
    warmup: int
    iterations: int
    threads: int | None


# -- child: build the workload, time meta_step, print one JSON line -----------------------------------


def measure(config: Config) -> dict[str, Any]:
    """Build the learner and the task batch, run warm-up then timed meta-steps; return the measurements."""
    import torch
    import torch.nn.functional as F

    from torchmaml import MetaLearner, TaskBatch
    from torchmaml.models import conv4

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(DATA_SEED)
    torch.manual_seed(MODEL_SEED)
    model = conv4(ways=WAYS)
    tasks, queries = config.meta_batch, WAYS * QUERIES_PER_CLASS
    batch = TaskBatch(
        torch.randn(tasks, WAYS, 1, 28, 28, generator=generator),
        torch.arange(WAYS).repeat(tasks, 1),
        torch.randn(tasks, queries, 1, 28, 28, generator=generator),
        torch.arange(WAYS).repeat_interleave(QUERIES_PER_CLASS).repeat(tasks, 1),
    )
    estimator, options = ESTIMATOR_SETTINGS[config.estimator]
    learner = MetaLearner(
        model,
        F.cross_entropy,
        inner_lr=INNER_LR,
        inner_steps=config.steps,
        estimator=estimator,
        strategy="loop",
        estimator_options=options,
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    rss_before = max_rss_mb()
    for _ in range(config.warmup):
        learner.meta_step(batch, optimizer)
    times_ms = []
    for _ in range(config.iterations):
        start = time.perf_counter()
        learner.meta_step(batch, optimizer)  # returns floats, so the step has finished
        times_ms.append((time.perf_counter() - start) * 1000)
    return {"times_ms": times_ms, "rss_before_mb": rss_before, "peak_rss_mb": max_rss_mb()}


def child_main(config_json: str) -> None:
    """Entry point of a child process: measure one configuration and print it as one JSON line."""
    config = Config(**json.loads(config_json))
    try:
        result = {"ok": True, **measure(config)}
    except Exception as error:
        result = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    print(json.dumps(result), flush=True)


# -- parent: run every configuration in a subprocess, print the tables --------------------------------


def run_child(config: Config, timeout_s: float) -> dict[str, Any]:
    """Run ``config`` in a fresh interpreter; a crash or a timeout becomes a failed result."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(asdict(config))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    stderr = done.stderr.strip().splitlines()
    return {"ok": False, "error": f"exit code {done.returncode}: {stderr[-1] if stderr else 'no output'}"}


def cell(result: dict[str, Any], quantity: str) -> str:
    """One table cell: the peak-memory increase in MB or the median ms per meta-step, or ``failed``."""
    if not result.get("ok") or not result["times_ms"]:
        return "failed"
    if quantity == "memory":
        return f"{result['peak_rss_mb'] - result['rss_before_mb']:.0f}"
    return f"{statistics.median(result['times_ms']):.0f}"


def markdown_table(results: dict[tuple[str, int], dict[str, Any]], args: argparse.Namespace, quantity: str) -> str:
    """Estimators as rows, inner steps as columns."""
    lines = ["| estimator | " + " | ".join(f"K={steps}" for steps in args.steps) + " |"]
    lines.append("|---|" + "---:|" * len(args.steps))
    for estimator in args.estimators:
        cells = [cell(results[estimator, steps], quantity) for steps in args.steps]
        lines.append(f"| {estimator} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict[tuple[str, int], dict[str, Any]], args: argparse.Namespace, torch_version: str) -> str:
    """The header (versions, machine, command line), both tables and the failures."""
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    threads = f"{args.threads} torch threads" if args.threads is not None else "torch's default threads"
    lines = [
        f"torch {torch_version}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {threads}",
        f"command: `{command}`",
        "",
        f"conv4(ways={WAYS}), {WAYS}-way 1-shot, {QUERIES_PER_CLASS} queries/class, 28x28 random images, "
        f"meta-batch {args.meta_batch}, inner_lr {INNER_LR}, strategy loop, Adam lr 1e-3; "
        f"{args.warmup} warm-up + {args.iterations} timed meta-steps per cell, each cell a fresh process",
        "",
        "Peak memory of the meta-steps (MB: peak RSS minus the RSS before the first meta-step):",
        "",
        markdown_table(results, args, "memory"),
        "",
        "Time per meta-step (ms, median):",
        "",
        markdown_table(results, args, "time"),
    ]
    failures = [(key, result["error"]) for key, result in results.items() if not result.get("ok")]
    if failures:
        lines += ["", "Failures:", *(f"- {name}, K={steps}: {error}" for (name, steps), error in failures)]
    return "\n".join(lines)


def names(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def integers(text: str) -> list[int]:
    """``"1,5"`` -> ``[1, 5]``."""
    return [int(number) for number in names(text)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak memory and ms per meta-step against inner steps, per estimator; prints markdown tables."
    )
    parser.add_argument(
        "--estimators", type=names, default=list(ESTIMATORS), help=f"comma-separated (default {','.join(ESTIMATORS)})"
    )
    parser.add_argument(
        "--steps",
        type=integers,
        default=list(STEPS),
        help=f"comma-separated numbers of inner steps (default {','.join(map(str, STEPS))})",
    )
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per meta-step (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-steps (default 1)")
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-steps (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration (default 1800)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.estimators if name not in ESTIMATORS]
    if unknown or not args.estimators:
        parser.error(f"--estimators: choose from {','.join(ESTIMATORS)}; got {','.join(args.estimators) or 'none'}")
    if not args.steps or min(args.steps) < 0:
        parser.error("--steps: needs integers >= 0")
    for name, minimum in (("meta_batch", 1), ("warmup", 0), ("iterations", 1), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            parser.error(f"--{name.replace('_', '-')}: must be >= {minimum}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return
    import torch

    results = {}
    for estimator in args.estimators:
        for steps in args.steps:
            config = Config(estimator, steps, args.meta_batch, args.warmup, args.iterations, args.threads)
            print(f"running {estimator} K={steps} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            results[estimator, steps] = run_child(config, args.timeout)
            status = "ok" if results[estimator, steps].get("ok") else results[estimator, steps]["error"]
            print(f"  {status} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    print(report(results, args, torch.__version__))


if __name__ == "__main__":
    main()
