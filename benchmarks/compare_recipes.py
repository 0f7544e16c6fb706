"""Learned inner rates, ANIL and the MAML++ recipe against plain MAML, side by side: one markdown table.

Three comparisons (``--comparisons``, default all), each a pair of presets run by ``torchmaml train`` and
meta-tested by ``torchmaml evaluate`` in child processes of their own (``OMP_NUM_THREADS=--threads``):

- ``metasgd``: sinusoid under the Meta-SGD protocol (preset ``sinusoid-metasgd``: 5-shot, one inner step,
  60,000 iterations): Meta-SGD (a learned rate per weight) vs MAML (``inner_lr_mode="fixed"``); the whole
  protocol, no time budget. Meta-test: MSE after 1 step on 600 held-out 5-shot tasks.
- ``anil``: Omniglot 5-way 1-shot, ANIL (``omniglot-5w1s-anil``: only the head adapted) vs MAML
  (``omniglot-5w1s``), the same training-time budget each.
- ``mamlpp``: Omniglot 20-way 1-shot, MAML++ (``omniglot-20w1s-mamlpp``) vs MAML (``omniglot-20w1s``), the
  same training-time budget each.

A budgeted run first trains a ``--pilot-iterations`` pilot to time an iteration, then trains
``N = budget / (seconds per iteration)`` iterations with ``time_limit_minutes = budget`` as a hard cap (the
MAML++ pilot times the exact-gradient phase, the slower one). MAML++'s schedules are scaled to ``N`` as in its
preset: multi-step loss annealed over the first 10% of the iterations, first-order over the first third;
its cosine schedule spans ``N``. All Omniglot runs share ``--meta-batch``, ``--queries`` (per class) and the
strided conv4 (cheaper on a CPU), final weights (no validation), ``--eval-tasks`` held-out tasks, MAML split.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_recipes.py --json runs/compare-recipes/results.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_recipes.py --budget-minutes 0.2 --sinusoid-iterations 200 \\
        --pilot-iterations 2 --eval-tasks 20 --out runs/compare-recipes/smoke      # a smoke test

The markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import TORCHMAML, fresh, last_error_line, names, read_metrics, run_child, seconds_per_iteration


@dataclass(frozen=True)
class Variant:
    """One side of a comparison: a preset plus overrides; ``budgeted`` runs get a pilot and a time budget."""

    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    budgeted: bool = True
    mamlpp_schedules: bool = False


@dataclass(frozen=True)
class Comparison:
    title: str
    variants: tuple[Variant, ...]
    steps: tuple[int, ...]
    metric: str


COMPARISONS = {
    "metasgd": Comparison(
        "sinusoid, Meta-SGD protocol (5-shot, 1 step)",
        (
            Variant("MAML", "sinusoid-metasgd", ('inner_lr_mode="fixed"',), budgeted=False),
            Variant("Meta-SGD", "sinusoid-metasgd", budgeted=False),
        ),
        steps=(1, 5),
        metric="mse",
    ),
    "anil": Comparison(
        "Omniglot 5-way 1-shot",
        (Variant("MAML", "omniglot-5w1s"), Variant("ANIL (head only)", "omniglot-5w1s-anil")),
        steps=(1, 3),
        metric="accuracy",
    ),
    "mamlpp": Comparison(
        "Omniglot 20-way 1-shot",
        (Variant("MAML", "omniglot-20w1s"), Variant("MAML++", "omniglot-20w1s-mamlpp", mamlpp_schedules=True)),
        steps=(1, 5),
        metric="accuracy",
    ),
}


def common_overrides(args: argparse.Namespace, variant: Variant) -> list[str]:
    if not variant.budgeted:
        return [f"iterations={args.sinusoid_iterations}", f"eval_tasks={args.sinusoid_eval_tasks}"]
    return [
        f"data_dir={args.data_dir}",
        f"cache_dir={args.cache_dir}",
        f"meta_batch_size={args.meta_batch}",
        f"queries={args.queries}",
        "strided=true",
        "validate_every=0",
        "checkpoint_every=1000000",
        f"eval_tasks={args.eval_tasks}",
    ]


def schedule_overrides(variant: Variant, iterations: int) -> list[str]:
    """MAML++'s schedules scaled to ``iterations`` (its preset's fractions: 10% multi-step loss, 1/3 FO)."""
    if not variant.mamlpp_schedules:
        return []
    return [
        f"multi_step_loss_iterations={max(1, round(iterations / 10))}",
        f"first_order_iterations={max(1, round(iterations / 3))}",
    ]


def train_command(args: argparse.Namespace, variant: Variant, overrides: list[str], out: Path) -> list[str]:
    command = [str(TORCHMAML), "train", "--config", variant.preset]
    for override in [*common_overrides(args, variant), *variant.overrides, *overrides]:
        command += ["--set", override]
    return [*command, "--out", str(out), "--no-progress"]


def slug(name: str) -> str:
    """``"MAML++"`` -> ``"mamlpp"``, ``"ANIL (head only)"`` -> ``"anil--head-only"``: a folder name."""
    return "".join(c if c.isalnum() else "p" if c == "+" else "-" for c in name.lower()).strip("-")


def plan_iterations(args: argparse.Namespace, variant: Variant, key: str, result: dict[str, Any]) -> int | None:
    """Iterations that fit the budget, from a pilot (``None`` and ``result["error"]`` if the pilot failed)."""
    pilot = fresh(args.out / f"pilot-{key}")
    no_warmup = ["first_order_iterations=0", "multi_step_loss_iterations=0"] if variant.mamlpp_schedules else []
    overrides = [f"iterations={args.pilot_iterations}", *no_warmup]
    log = args.out / f"pilot-{key}.log"
    code, _, _ = run_child(train_command(args, variant, overrides, pilot), log, args.threads)
    if code != 0:
        result["error"] = f"pilot exit code {code}: {last_error_line(log)}"
        return None
    rate = seconds_per_iteration(read_metrics(pilot))
    result["pilot_seconds_per_iteration"] = rate
    return max(1, math.floor(args.budget_minutes * 60 / rate))


def run_variant(args: argparse.Namespace, comparison: str, variant: Variant) -> dict[str, Any]:
    """Pilot (if budgeted), training and meta-test of one variant."""
    key = f"{comparison}-{slug(variant.name)}"
    result: dict[str, Any] = {"comparison": comparison, "variant": variant.name, "preset": variant.preset, "ok": False}
    overrides: list[str] = []
    if variant.budgeted:
        iterations = plan_iterations(args, variant, key, result)
        if iterations is None:
            return result
        result["planned_iterations"] = iterations
        overrides = [
            f"iterations={iterations}",
            f"time_limit_minutes={args.budget_minutes}",
            *schedule_overrides(variant, iterations),
        ]
    run = fresh(args.out / key)
    command = train_command(args, variant, overrides, run)
    result["command"] = shlex.join(command)
    print(f"{key}: {result['command']}", file=sys.stderr, flush=True)
    log = args.out / f"{key}.log"
    code, wall, rss = run_child(command, log, args.threads)
    result.update(train_wall_seconds=wall, peak_rss_mb=rss)
    if code != 0:
        result["error"] = f"train exit code {code}: {last_error_line(log)}"
        return result
    records = read_metrics(run)
    done, seconds = records[-1]["iteration"], records[-1]["seconds"]
    result.update(iterations=done, train_seconds=seconds, seconds_per_iteration=seconds / done)
    log = args.out / f"{key}-evaluate.log"
    code, _, _ = run_child([str(TORCHMAML), "evaluate", str(run)], log, args.threads)
    if code != 0:
        result["error"] = f"evaluate exit code {code}: {last_error_line(log)}"
        return result
    evaluation = json.loads((run / "evaluation.json").read_text())
    shots = min(row["support_size"] for row in evaluation["results"])
    for row in evaluation["results"]:
        if row["model"] == "maml" and row["support_size"] == shots:
            result[f"steps_{row['steps']}"] = {"mean": row["mean"], "ci95": row["ci95"]}  # mean null: diverged
    result.update(ok=True, eval_tasks=evaluation["eval_tasks"])
    print(f"  {done} iterations in {seconds:.0f} s; evaluated", file=sys.stderr, flush=True)
    return result


def cell(result: dict[str, Any], steps: int, metric: str) -> str:
    value = result.get(f"steps_{steps}")
    if value is None:
        return "-"
    if value["mean"] is None:
        return "diverged"
    if metric == "accuracy":
        return f"{100 * value['mean']:.1f} ± {100 * value['ci95']:.1f} %"
    return f"{value['mean']:.3f} ± {value['ci95']:.3f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> str:
    import torch

    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    lines = [
        f"command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} {command}`",
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs; every child "
        f"ran with OMP_NUM_THREADS={args.threads}; Omniglot runs: {args.budget_minutes:g} min training budget "
        f"each, strided conv4, meta-batch {args.meta_batch}, {args.queries} queries/class, {args.eval_tasks} test "
        f"tasks; total wall time {wall / 60:.1f} min",
    ]
    for key in args.comparisons:
        comparison = COMPARISONS[key]
        rows = [result for result in results if result["comparison"] == key]
        steps = comparison.steps
        lines += [
            "",
            f"**{comparison.title}** ({comparison.metric}, mean ± 95% CI over {rows[0].get('eval_tasks', '?')} tasks)",
            "",
            "| variant | preset | iterations | s / iteration | training s | peak RSS (MB) | "
            + " | ".join(f"{s} step{'s' * (s > 1)}" for s in steps)
            + " |",
            "|---|---|---:|---:|---:|---:|" + "---:|" * len(steps),
        ]
        for row in rows:
            spi = f"{row['seconds_per_iteration']:.3f}" if "seconds_per_iteration" in row else "-"
            secs = f"{row['train_seconds']:.0f}" if "train_seconds" in row else "-"
            rss = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "-"
            cells = " | ".join(cell(row, s, comparison.metric) for s in steps)
            done = row.get("iterations", "-")
            if row.get("planned_iterations", done) != done:
                done = f"{done} of {row['planned_iterations']} planned"
            lines.append(f"| {row['variant']} | {row['preset']} | {done} | {spi} | {secs} | {rss} | {cells} |")
        lines += [f"- {row['variant']} failed: {row['error']}" for row in rows if not row["ok"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Meta-SGD, ANIL and MAML++ against MAML; markdown tables.")
    parser.add_argument("--comparisons", type=names, default=list(COMPARISONS), help="metasgd,anil,mamlpp")
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="Omniglot training time per variant")
    parser.add_argument("--pilot-iterations", type=int, default=6, help="iterations of each timing pilot")
    parser.add_argument("--meta-batch", type=int, default=8, help="Omniglot tasks per meta-iteration (default 8)")
    parser.add_argument("--queries", type=int, default=5, help="Omniglot query images per class (default 5)")
    parser.add_argument("--eval-tasks", type=int, default=200, help="Omniglot held-out test tasks (default 200)")
    parser.add_argument("--sinusoid-iterations", type=int, default=60000, help="Meta-SGD protocol: 60000")
    parser.add_argument("--sinusoid-eval-tasks", type=int, default=600, help="sinusoid test tasks (default 600)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every child (default 1)")
    parser.add_argument("--data-dir", default="../shared/data/omniglot", help="Omniglot (default %(default)s)")
    parser.add_argument("--cache-dir", default="runs/compare-recipes/cache", help="image cache (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare-recipes"), help="run folders and logs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.comparisons if name not in COMPARISONS]
    if unknown or not args.comparisons:
        parser.error(f"--comparisons: choose from {','.join(COMPARISONS)}; got {','.join(args.comparisons) or 'none'}")
    if not args.budget_minutes > 0:
        parser.error("--budget-minutes must be > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [run_variant(args, key, variant) for key in args.comparisons for variant in COMPARISONS[key].variants]
    table = report(results, args, time.perf_counter() - started)
    print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "table": table}, indent=2))


if __name__ == "__main__":
    main()
