"""Meta-training speed and peak memory of ``MetaLearner.meta_step`` per workload, order and strategy.

For every (workload, order, strategy) configuration this script measures, in a fresh subprocess of its
own (so that peak memory is per configuration):

* meta-iterations per second, from the median wall time of one ``meta_step`` over the timed
  iterations (after some untimed warm-up ones), with the min-max spread of those times;
* memory: the process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) once the model,
  learner and data are built but before any meta-step ("RSS before"), and at the end of the run
  ("peak RSS"); their difference is what the meta-steps themselves needed.

Workloads (the same initial weights, ``torch.manual_seed(0)`` before building the model, and the same
fixed task batch, reused on every iteration, for every configuration):

* ``W1`` sinusoid regression: ``mlp()`` (1-40-40-1), MSE, 25 tasks of 10 support + 10 query points,
  inner_lr 0.01, 1 inner step. Defaults: 10 warm-up, 100 timed iterations.
* ``W2`` Omniglot-shaped 5-way 1-shot: ``conv4(ways=5)`` on random normal [1, 28, 28] images, cross
  entropy, 32 tasks of 5 support + 75 query images, inner_lr 0.4, 1 inner step. Defaults: 1 warm-up,
  5 timed iterations.
* ``W2u``: W2 with a user's plain model instead of ``conv4``: ``user_conv4(ways=5)``, an ``nn.Sequential`` of
  four ``nn.Conv2d(3x3, padding 1) -> nn.BatchNorm2d -> nn.ReLU -> nn.MaxPool2d(2)`` blocks (64 filters) and a
  ``nn.Linear`` head, in training mode (batch statistics); the same function and initial weights as W2's
  ``conv4``, torch's layers instead of conv4's.
* ``W3`` Omniglot-shaped 20-way 1-shot with 5 inner steps (MAML's 20-way protocol): ``conv4(ways=20)``,
  16 tasks of 20 support + 300 query images (15 per class), inner_lr 0.1. Defaults: 1 warm-up, 3 timed.

Orders: ``second`` is the exact ``"unrolled"`` estimator, ``first`` is ``"first_order"`` (FO-MAML).
Strategies: ``vmap``, ``chunked`` (``--chunk-size`` tasks per vectorised call), ``loop`` and ``auto``
(the row then shows which strategy it picked); ``vmap+compile`` and ``loop+compile`` add
``MetaLearner(compile=True)`` (the compilation happens in the warm-up iterations, which are not timed).

Run from the repository root (a full run takes several minutes; W2 with vmap can use ~7 GB of RAM)::

    .venv/bin/python benchmarks/speed.py
    .venv/bin/python benchmarks/speed.py --workloads W1 --threads 1 --json speed.json
    .venv/bin/python benchmarks/speed.py --workloads W2 --orders first --strategies loop,chunked \\
        --warmup 0 --iterations 1

The markdown table goes to stdout, progress to stderr.
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

WORKLOADS = ("W1", "W2", "W2u", "W3")
ORDERS = {"second": "unrolled", "first": "first_order"}
STRATEGIES = ("vmap", "chunked", "loop", "auto", "vmap+compile", "loop+compile")
DEFAULT_ITERATIONS = {"W1": (10, 100), "W2": (1, 5), "W2u": (1, 5), "W3": (1, 3)}  # (warm-up, timed)
DESCRIPTIONS = {
    "W1": "sinusoid: mlp 1-40-40-1, MSE, 25 tasks x (10 support + 10 query), inner_lr 0.01, 1 step",
    "W2": "Omniglot-shaped: conv4(ways=5), cross entropy, 32 tasks x 5-way 1-shot, 15 queries/class, "
    "inner_lr 0.4, 1 step",
    "W2u": "W2 with a user's plain nn.Sequential (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d x 4, "
    "nn.Linear) in place of conv4",
    "W3": "Omniglot-shaped: conv4(ways=20), cross entropy, 16 tasks x 20-way 1-shot, 15 queries/class, "
    "inner_lr 0.1, 5 steps",
}
INNER_STEPS = {"W1": 1, "W2": 1, "W2u": 1, "W3": 5}
MODEL_SEED = 0
DATA_SEED = 1


@dataclass(frozen=True)
class Config:
    """One measured configuration, as passed from the parent to its child process."""

    workload: str
    order: str
    strategy: str
    chunk_size: int
    warmup: int
    iterations: int
    threads: int | None


# -- child: build one workload, time meta_step, print one JSON line -----------------------------------


def build_workload(name: str) -> tuple[Any, Any, float, Any]:
    """``(model, loss, inner_lr, task_batch)`` for workload ``name``, with fixed seeds."""
    import torch
    import torch.nn.functional as F

    from torchmaml import TaskBatch
    from torchmaml.data import SinusoidTasks
    from torchmaml.models import conv4, mlp

    generator = torch.Generator().manual_seed(DATA_SEED)
    torch.manual_seed(MODEL_SEED)
    if name == "W1":
        return mlp(), F.mse_loss, 0.01, SinusoidTasks(10, 10).sample(25, generator)
    if name in ("W2", "W2u", "W3"):
        tasks, ways, queries_per_class, inner_lr = (16, 20, 15, 0.1) if name == "W3" else (32, 5, 15, 0.4)
        model = user_conv4(ways=ways) if name == "W2u" else conv4(ways=ways)
        support_x = torch.randn(tasks, ways, 1, 28, 28, generator=generator)
        support_y = torch.arange(ways).repeat(tasks, 1)
        query_x = torch.randn(tasks, ways * queries_per_class, 1, 28, 28, generator=generator)
        query_y = torch.arange(ways).repeat_interleave(queries_per_class).repeat(tasks, 1)
        return model, F.cross_entropy, inner_lr, TaskBatch(support_x, support_y, query_x, query_y)
    raise ValueError(f"unknown workload {name!r}")


def user_conv4(ways: int, filters: int = 64) -> Any:
    """conv4 as a user would write it with torch's layers (textbook order: batch norm, ReLU, max-pooling), for
    28x28 one-channel images. Built under the same seed it has ``conv4(ways)``'s initial weights (the same
    layers in the same order draw the same random numbers)."""
    from torch import nn

    layers: list[nn.Module] = []
    for index in range(4):
        layers += [nn.Conv2d(1 if index == 0 else filters, filters, 3, padding=1), nn.BatchNorm2d(filters)]
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(filters, ways))


def measure(config: Config) -> dict[str, Any]:
    """Build the configuration's learner, run warm-up then timed meta-steps; return the measurements."""
    import torch

    from torchmaml import MetaLearner
    from torchmaml.allocator import keep_freed_memory

    keep_freed_memory()  # opt-in glibc tuning, as the torchmaml command line does (torchmaml.allocator)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model, loss, inner_lr, batch = build_workload(config.workload)
    learner = MetaLearner(
        model,
        loss=loss,
        inner_lr=inner_lr,
        inner_steps=INNER_STEPS[config.workload],
        estimator=ORDERS[config.order],
        strategy=config.strategy.removesuffix("+compile"),
        chunk_size=config.chunk_size if config.strategy == "chunked" else None,
        compile=config.strategy.endswith("+compile"),
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    rss_before = max_rss_mb()
    first_metrics = None
    for _ in range(config.warmup):
        metrics = learner.meta_step(batch, optimizer)
        first_metrics = first_metrics or metrics
    times_ms = []
    for _ in range(config.iterations):
        start = time.perf_counter()
        metrics = learner.meta_step(batch, optimizer)  # returns floats, so the step has finished
        times_ms.append((time.perf_counter() - start) * 1000)
        first_metrics = first_metrics or metrics
    return {
        "resolved_strategy": learner.strategy,
        "threads": torch.get_num_threads(),
        "times_ms": times_ms,
        "rss_before_mb": rss_before,
        "peak_rss_mb": max_rss_mb(),
        "first_loss_before": (first_metrics or {}).get("loss_before"),
    }


def child_main(config_json: str) -> None:
    """Entry point of a child process: measure one configuration and print it as one JSON line."""
    config = Config(**json.loads(config_json))
    try:
        result = {"ok": True, **measure(config)}
    except Exception as error:
        result = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    print(json.dumps(result), flush=True)


# -- parent: run every configuration in a subprocess, print the table --------------------------------


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
    reason = stderr[-1] if stderr else "no output"
    return {"ok": False, "error": f"exit code {done.returncode}: {reason}"}


def summarize(config: Config, result: dict[str, Any]) -> dict[str, Any]:
    """The configuration and its result, with the timing statistics computed from the raw times."""
    row: dict[str, Any] = {**asdict(config), **result}
    times = result.get("times_ms") or []
    if result.get("ok") and times:
        median = statistics.median(times)
        row.update(median_ms=median, min_ms=min(times), max_ms=max(times), it_per_s=1000 / median)
    return row


def strategy_label(row: dict[str, Any]) -> str:
    """``chunked (4)``, ``auto -> loop``, or the plain strategy name."""
    if row["strategy"] == "chunked":
        return f"chunked ({row['chunk_size']})"
    if row["strategy"] == "auto" and row.get("resolved_strategy"):
        return f"auto → {row['resolved_strategy']}"
    return row["strategy"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table, one row per configuration."""
    header = (
        "| workload | order | strategy | it/s | ms/it (median) | ms/it (min-max) | timed its "
        "| RSS before (MB) | peak RSS (MB) | increase (MB) |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        head = f"| {row['workload']} | {row['order']} | {strategy_label(row)} |"
        if "median_ms" not in row:
            error = row.get("error", "no timed iterations")
            lines.append(f"{head} failed: {error.replace('|', '/')} | | | | | | |")
            continue
        before, peak = row["rss_before_mb"], row["peak_rss_mb"]
        lines.append(
            f"{head} {row['it_per_s']:.2f} | {row['median_ms']:.1f} "
            f"| {row['min_ms']:.1f}-{row['max_ms']:.1f} | {row['iterations']} "
            f"| {before:.0f} | {peak:.0f} | {peak - before:.0f} |"
        )
    return "\n".join(lines)


def header_lines(
    args: argparse.Namespace, torch_version: str, threads: int, load_average: tuple[float, ...]
) -> list[str]:
    """Lines saying how the table was made: versions, threads, machine load, command line."""
    source = "--threads" if args.threads is not None else "torch default"
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    lines = [
        f"torch {torch_version}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {threads} torch threads ({source}), "
        f"load average before the run {load_average[0]:.2f}",
        f"command: `{command}`",
        "",
    ]
    lines += [f"- {name}: {DESCRIPTIONS[name]}" for name in args.workloads]
    lines += [
        "- second = estimator 'unrolled', first = estimator 'first_order'; Adam lr 1e-3; "
        "one fixed task batch reused for every iteration",
        "- peak RSS = ru_maxrss of a fresh process per row; RSS before = the same after building the model, "
        "learner and data, before any meta-step",
        "",
    ]
    return lines


def parse_list(choices: tuple[str, ...] | dict[str, str]) -> Any:
    """An argparse type for a comma-separated list of names from ``choices``."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return names

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark MetaLearner.meta_step speed and peak memory; prints a markdown table."
    )
    lists = {"--workloads": WORKLOADS, "--orders": tuple(ORDERS), "--strategies": STRATEGIES}
    for flag, names in lists.items():
        help_text = f"comma-separated (default {','.join(names)})"
        parser.add_argument(flag, type=parse_list(names), default=list(names), help=help_text)
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default: W1 10, W2 and W3 1)")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default: W1 100, W2 5, W3 3)")
    parser.add_argument("--chunk-size", type=int, default=4, help="tasks per call for 'chunked' (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration (default 900)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also save the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("warmup", "iterations", "chunk_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')}: must be >= {0 if name == 'warmup' else 1}")
    return args


def configs(args: argparse.Namespace) -> list[Config]:
    """Every requested (workload, order, strategy) configuration, in table order."""
    result = []
    for workload in args.workloads:
        warmup, iterations = DEFAULT_ITERATIONS[workload]
        for order in args.orders:
            for strategy in args.strategies:
                result.append(
                    Config(
                        workload=workload,
                        order=order,
                        strategy=strategy,
                        chunk_size=args.chunk_size,
                        warmup=warmup if args.warmup is None else args.warmup,
                        iterations=iterations if args.iterations is None else args.iterations,
                        threads=args.threads,
                    )
                )
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_average = os.getloadavg()  # other work on the machine skews the timings
    rows = []
    for config in configs(args):
        print(f"running {config.workload} {config.order} {config.strategy} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        row = summarize(config, run_child(config, args.timeout))
        status = "ok" if "median_ms" in row else row.get("error", "failed")
        print(f"  {status} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        rows.append(row)
    header = header_lines(args, torch.__version__, torch.get_num_threads(), load_average)
    print("\n".join([*header, markdown_table(rows)]))
    if args.json:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average": load_average,
            "command": [sys.executable, *sys.argv],
        }
        with open(args.json, "w") as file:
            json.dump({"meta": meta, "results": rows}, file, indent=2)
        print(f"results saved to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
