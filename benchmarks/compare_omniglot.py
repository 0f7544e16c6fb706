"""The meta-gradient estimators compared on Omniglot 5-way 1-shot under the same compute budget.

"The same compute budget" is the same wall-clock training time per estimator. For each estimator this
script

1. runs a short pilot (``--pilot-iterations`` meta-iterations, default 10) with ``torchmaml train`` and
   reads its seconds per iteration from ``metrics-maml.jsonl`` (whose ``seconds`` field is the cumulative
   training time; the first iteration, which pays one-off costs, is left out of the estimate);
2. trains for ``N = budget / (seconds per iteration)`` iterations (``--budget-minutes``, default 6), with

       torchmaml train --config omniglot-5w1s --set data_dir=DATA --set cache_dir=CACHE
           --set meta_batch_size=8 --set strided=true --set estimator=NAME --set iterations=N
           --set checkpoint_every=1000000 --set validate_every=0 --set eval_tasks=200 --set eval_steps=[1,3]
           [the estimator's own settings] --out OUT/NAME --no-progress

   (the preset: conv4, inner_lr 0.4, 1 inner step, Adam 1e-3, 15 queries per class, MAML split);
3. meta-tests it with ``torchmaml evaluate OUT/NAME`` (the final weights: there is no validation): the
   accuracy after 1 and 3 inner steps on ``--eval-tasks`` held-out tasks, mean ± 95% CI, from
   ``evaluation.json``.

Every ``torchmaml`` command runs as a child process of its own with ``OMP_NUM_THREADS=--threads``; the
peak resident set size of the training child is read from ``os.wait4`` on that child (the per-child
``getrusage(RUSAGE_CHILDREN)`` figure: ``RUSAGE_CHILDREN`` itself keeps the largest child so far, so it
would not separate the runs).

With ``--time-limit`` there is no pilot: every run trains for ``--budget-minutes`` of training time
(``time_limit_minutes``), which stays equal when the machine's load changes. ``--parallel 2`` trains two
estimators at a time (one core each). ``--eval-steps`` sets the meta-test's step counts (default 1,3); an
``implicit`` run is also scored after that many steps of its own adaptation, the proximal solve.

Estimators: ``unrolled`` (exact MAML), ``first_order`` (FO-MAML), ``hessian_free`` (HF-MAML, default
``delta``), ``implicit`` (iMAML with the paper's Omniglot settings, ``IMPLICIT_SETTINGS``: ``lam`` 2, 16
steps of the backtracking proximal solver, 5 CG iterations on the Gauss-Newton system) and ``reptile``.
``three_batch`` is left out: it needs an independent Hessian set (``hessian_size``), which the others would not
use. Reptile is not trained with the MAML recipe; its settings are ``REPTILE_SETTINGS`` below (5 SGD inner
steps on the support images, plain SGD outer step with the paper's ``epsilon = 1`` annealed towards 0, here by
a cosine schedule). Its meta-test uses the same protocol as the others (inner_lr 0.4, 1 and 3 steps on the
support set).

Run from the repository root (about ``len(estimators) * (budget + 1-2 min)``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_omniglot.py --json runs/compare-omniglot/results.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_omniglot.py --estimators unrolled,implicit \\
        --budget-minutes 30 --time-limit --parallel 2 --eval-steps 1,3,16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_omniglot.py --budget-minutes 0.2 \\
        --pilot-iterations 3 --eval-tasks 20 --out runs/compare-omniglot/smoke     # a smoke test

The markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _harness import TORCHMAML, fresh, last_error_line, names, read_metrics, run_child, seconds_per_iteration

ESTIMATORS = ("unrolled", "first_order", "hessian_free", "implicit", "reptile")
# Reptile (Nichol et al. 2018): 5 full-batch SGD inner steps at the preset's rate 0.4 on the 5 support images
# (use_query=false: the data of the 1-shot meta-test, and about 3x cheaper per iteration than the estimator's
# default of support + 75 query images, so about 3x more meta-updates in the budget), outer SGD with the
# paper's epsilon = 1 annealed to 0 (cosine; the paper anneals linearly).
REPTILE_SETTINGS = (
    "inner_steps=5",
    "estimator_options={use_query=false}",
    "outer_optimizer=sgd",
    "outer_lr=1.0",
    "outer_lr_schedule=cosine",
    "min_outer_lr=0.0",
)
# iMAML with the paper's Omniglot settings (Rajeswaran et al. 2019, Table 2: lambda = 2, 16 gradient steps on the
# proximal objective for 5-way, 5 CG steps); the steps are the backtracking solver's trials here
IMPLICIT_SETTINGS = ("estimator_options={lam=2.0, solver_steps=16, cg_iterations=5}",)
SETTINGS = {"reptile": REPTILE_SETTINGS, "implicit": IMPLICIT_SETTINGS}


def describe_settings(name: str) -> str:
    """The estimator's settings beyond the preset, for the table."""
    return ", ".join(SETTINGS.get(name, ())) or "preset (inner_lr 0.4, 1 step, Adam 1e-3)"


def train_command(args: argparse.Namespace, name: str, iterations: int | None, out: Path) -> list[str]:
    """The ``torchmaml train`` command line of one run: ``iterations``, or (``None``) the time limit."""
    budget = [f"iterations={iterations}"]
    if iterations is None:
        budget = ["iterations=10000000", f"time_limit_minutes={args.budget_minutes:g}"]
    overrides = [
        f"data_dir={args.data_dir}",
        f"cache_dir={args.cache_dir}",
        f"meta_batch_size={args.meta_batch}",
        "strided=true",
        f"estimator={name}",
        *budget,
        "checkpoint_every=1000000",
        "validate_every=0",
        f"eval_tasks={args.eval_tasks}",
        f"eval_steps=[{','.join(map(str, args.eval_steps))}]",
        *SETTINGS.get(name, ()),
    ]
    command = [str(TORCHMAML), "train", "--config", "omniglot-5w1s"]
    for override in overrides:
        command += ["--set", override]
    return [*command, "--out", str(out), "--no-progress"]


def compare(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Pilot, budgeted training and meta-test of one estimator."""
    result: dict[str, Any] = {"estimator": name, "settings": describe_settings(name), "ok": False}
    iterations = None
    if not args.time_limit:
        pilot = fresh(args.out / f"pilot-{name}")
        code, wall, _ = run_child(
            train_command(args, name, args.pilot_iterations, pilot), args.out / f"pilot-{name}.log", args.threads
        )
        if code != 0:
            result["error"] = f"pilot exit code {code}: {last_error_line(args.out / f'pilot-{name}.log')}"
            return result
        pilot_rate = seconds_per_iteration(read_metrics(pilot))
        iterations = max(1, math.floor(args.budget_minutes * 60 / pilot_rate))
        result.update(pilot_seconds_per_iteration=pilot_rate, planned_iterations=iterations)
        print(
            f"  {name} pilot: {pilot_rate:.3f} s/iteration ({wall:.0f} s) -> {iterations} iterations",
            file=sys.stderr,
            flush=True,
        )

    run = fresh(args.out / name)
    command = train_command(args, name, iterations, run)
    result["command"] = shlex.join(command)
    code, wall, rss = run_child(command, args.out / f"{name}.log", args.threads)
    result.update(train_wall_seconds=wall, peak_rss_mb=rss)
    if code != 0:
        result["error"] = f"train exit code {code}: {last_error_line(args.out / f'{name}.log')}"
        return result
    records = read_metrics(run)
    done = records[-1]["iteration"]
    tail = records[-max(1, len(records) // 10) :]
    result.update(
        iterations=done,
        train_seconds=records[-1]["seconds"],
        seconds_per_iteration=records[-1]["seconds"] / done,
        final_loss_after=sum(r["loss_after"] for r in tail) / len(tail),
        skipped=sum(int(r.get("skipped", 0)) for r in records),
    )
    print(
        f"  {name} trained {done} iterations in {records[-1]['seconds']:.0f} s, peak RSS {rss:.0f} MB",
        file=sys.stderr,
        flush=True,
    )

    evaluate = [str(TORCHMAML), "evaluate", str(run)]
    code, wall, _ = run_child(evaluate, args.out / f"{name}-evaluate.log", args.threads)
    if code != 0:
        result["error"] = f"evaluate exit code {code}: {last_error_line(args.out / f'{name}-evaluate.log')}"
        return result
    evaluation = json.loads((run / "evaluation.json").read_text())
    for row in evaluation["results"]:
        prefix = {"maml": "accuracy", "maml (proximal)": "own_accuracy"}.get(row["model"])
        if prefix is not None and row["mean"] is not None:  # null: adaptation diverged on some task
            result[f"{prefix}_{row['steps']}"] = {"mean": row["mean"], "ci95": row["ci95"]}
    result.update(ok=True, eval_tasks=evaluation["eval_tasks"], evaluate_wall_seconds=wall)
    print(f"  {name} evaluated in {wall:.0f} s", file=sys.stderr, flush=True)
    return result


def accuracy(result: dict[str, Any], steps: int, prefix: str = "accuracy") -> str:
    value = result.get(f"{prefix}_{steps}")
    return f"{100 * value['mean']:.1f} ± {100 * value['ci95']:.1f} %" if value else "-"


def number(result: dict[str, Any], key: str, fmt: str) -> str:
    return format(result[key], fmt) if key in result else "-"


def report(results: list[dict[str, Any]], args: argparse.Namespace, torch_version: str, wall: float) -> str:
    """The header (command line, versions, threads, protocol) and the table."""
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    budget = f"iterations from a {args.pilot_iterations}-iteration pilot"
    if args.time_limit:
        budget = "a time limit on each run"
    lines = [
        f"command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} {command}`",
        f"torch {torch_version}, Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"every torchmaml child ran with OMP_NUM_THREADS={args.threads}",
        "",
        f"Omniglot 5-way 1-shot (MAML split), strided conv4, meta-batch {args.meta_batch}, 15 queries/class; "
        f"budget {args.budget_minutes:g} min of training per estimator ({budget}); meta-test on "
        f"{args.eval_tasks} held-out tasks with inner_lr 0.4 (final weights), mean ± 95% CI; total wall time "
        f"{wall / 60:.1f} min",
        "",
        "| estimator | settings | iterations | s / iteration | training s | peak RSS (MB) | "
        "train query loss (last 10%) | " + " | ".join(f"accuracy, {s} steps" for s in args.eval_steps) + " |",
        "|---|---|" + "---:|" * (5 + len(args.eval_steps)),
    ]
    for result in results:
        lines.append(
            f"| {result['estimator']} | {result['settings']} | {number(result, 'iterations', 'd')} | "
            f"{number(result, 'seconds_per_iteration', '.2f')} | {number(result, 'train_seconds', '.0f')} | "
            f"{number(result, 'peak_rss_mb', '.0f')} | {number(result, 'final_loss_after', '.3f')} | "
            + " | ".join(accuracy(result, s) for s in args.eval_steps)
            + " |"
        )
        if any(f"own_accuracy_{s}" in result for s in args.eval_steps):  # iMAML: after its proximal solve too
            cells = " | ".join(accuracy(result, s, "own_accuracy") for s in args.eval_steps)
            lines.append(f"| {result['estimator']}, own adaptation | proximal solve (solver steps) |||||| {cells} |")
    failures = [result for result in results if not result["ok"]]
    if failures:
        lines += ["", "Failures:", *(f"- {result['estimator']}: {result['error']}" for result in failures)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Omniglot 5-way 1-shot accuracy of each estimator under the same training time; markdown table."
    )
    parser.add_argument(
        "--estimators", type=names, default=list(ESTIMATORS), help=f"comma-separated (default {','.join(ESTIMATORS)})"
    )
    parser.add_argument("--budget-minutes", type=float, default=6.0, help="training time per estimator (default 6)")
    parser.add_argument("--pilot-iterations", type=int, default=10, help="iterations of the timing pilot (default 10)")
    parser.add_argument(
        "--time-limit", action="store_true", help="train each run for the budget's time (time_limit_minutes), no pilot"
    )
    parser.add_argument("--parallel", type=int, default=1, help="estimators trained at a time (default 1)")
    parser.add_argument(
        "--eval-steps", type=lambda text: [int(v) for v in names(text)], default=[1, 3], help="default 1,3"
    )
    parser.add_argument("--meta-batch", type=int, default=8, help="tasks per meta-iteration (default 8)")
    parser.add_argument("--eval-tasks", type=int, default=200, help="held-out test tasks (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every child (default 1)")
    parser.add_argument("--data-dir", default="../shared/data/omniglot", help="Omniglot (default %(default)s)")
    parser.add_argument("--cache-dir", default="runs/compare-omniglot/cache", help="image cache (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare-omniglot"), help="run folders and logs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.estimators if name not in ESTIMATORS]
    if unknown or not args.estimators:
        parser.error(f"--estimators: choose from {','.join(ESTIMATORS)}; got {','.join(args.estimators) or 'none'}")
    if not args.budget_minutes > 0:
        parser.error("--budget-minutes: must be > 0")
    for name in ("pilot_iterations", "meta_batch", "threads", "parallel"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.eval_tasks < 2:
        parser.error("--eval-tasks: must be >= 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def run(name: str) -> dict[str, Any]:
        print(f"{name} ...", file=sys.stderr, flush=True)
        result = compare(args, name)
        if not result["ok"]:
            print(f"  {name} failed: {result['error']}", file=sys.stderr, flush=True)
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:  # each run is a child process
        results = list(pool.map(run, args.estimators))
    wall = time.perf_counter() - start
    table = report(results, args, torch.__version__, wall)
    print(table)
    if args.json is not None:
        payload = {
            "torch": torch.__version__,
            "threads": args.threads,
            "budget_minutes": args.budget_minutes,
            "pilot_iterations": None if args.time_limit else args.pilot_iterations,
            "eval_steps": args.eval_steps,
            "meta_batch": args.meta_batch,
            "eval_tasks": args.eval_tasks,
            "wall_seconds": wall,
            "results": results,
            "table": table,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
