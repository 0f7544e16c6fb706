"""When does MAML help on text? MAML vs pretrained-then-fine-tuned vs from scratch (Liu et al. 2020), measured.

One command trains, for one class group (``all`` languages, or the ``latin``-alphabet ones: similar classes),
a MAML model with a preset (``text-5w5s-gru`` unless ``--preset``) and the pretrained baseline
(``torchmaml.transfer``), picks the baselines' fine-tuning rates on validation tasks, then meta-tests all three
methods on the same held-out tasks of the test languages for every support size in ``--shots``:

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m experiments.text_maml --group latin --out runs/text-latin

It writes ``results.json`` and ``table.md`` (accuracy %, mean ± 95% CI over ``--tasks`` tasks) into ``--out``
and prints the table. A MAML run already in ``--out/maml`` is resumed (a finished one is reused).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torchmaml.benchmark import benchmark_of
from torchmaml.config import load_config
from torchmaml.evaluate import evaluate_adaptation, tune_fine_tuning_lr
from torchmaml.experiment import MAML
from torchmaml.report import load_learner
from torchmaml.rundir import RunDir
from torchmaml.train import train_run
from torchmaml.transfer import fine_tuned, from_scratch, pretrain

GRID = [0.03, 0.1, 0.3, 1.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", choices=["all", "latin"], default="all")
    parser.add_argument("--preset", default="text-5w5s-gru")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--tasks", type=int, default=100, help="test tasks per support size")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20], help="fine-tuning steps measured")
    parser.add_argument("--pretrain-iterations", type=int, default=1500)
    parser.add_argument("--set", action="append", default=[], help="preset overrides, key=value")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.preset, [f"language_group={args.group}", *args.set])
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    run = args.out / "maml"
    train_run(config, run, progress=False, resume=(run / "config.toml").exists())
    seconds["maml training"] = time.perf_counter() - start
    maml, _ = load_learner(RunDir(run), config, MAML)

    start = time.perf_counter()
    pretrained = fine_tuned(config, pretrain(config, args.pretrain_iterations))
    seconds["pretraining"] = time.perf_counter() - start
    scratch = from_scratch(config)

    start = time.perf_counter()
    benchmark = benchmark_of(config)
    validation = benchmark.evaluation_batches(config, "validation", None)[config.shots]
    rates = {
        "maml": config.inner_lr,
        "pretrained": tune_fine_tuning_lr(pretrained, validation, args.steps, GRID, F.cross_entropy),
        "scratch": tune_fine_tuning_lr(scratch, validation, args.steps, GRID, F.cross_entropy),
    }
    seconds["rate tuning"] = time.perf_counter() - start
    learners = {"maml": maml, "pretrained": pretrained, "scratch": scratch}
    results = []
    start = time.perf_counter()
    for shots in args.shots:
        batches = benchmark.evaluation_batches(config.model_copy(update={"shots": shots}), "test", args.tasks)
        for name, learner in learners.items():
            for row in evaluate_adaptation(
                learner, batches[shots], args.steps, name, benchmark.metric.fn, inner_lr=rates[name]
            ):
                results.append({**row.to_dict(), "shots": shots})
    seconds["meta-test"] = time.perf_counter() - start
    summary = benchmark.split_summary(config)
    report = {
        "preset": args.preset,
        "group": args.group,
        "overrides": args.set,
        "split": summary,
        "rates": rates,
        "seconds": seconds,
        "tasks": args.tasks,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


def markdown(report: dict) -> str:
    """One row per (method, shots): accuracy % after each step count."""
    steps = sorted({r["steps"] for r in report["results"]})
    lines = [
        f"| group | K | method | {' | '.join(f'{s} steps' for s in steps)} |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    rows: dict[tuple[int, str], dict[int, dict]] = {}
    for r in report["results"]:
        rows.setdefault((r["shots"], r["model"]), {})[r["steps"]] = r
    for (shots, model), by_step in rows.items():
        cells = " | ".join(_cell(by_step[s]) for s in steps)
        lines.append(f"| {report['group']} | {shots} | {model} | {cells} |")
    return "\n".join(lines)


def _cell(row: dict) -> str:
    if row["mean"] is None:
        return "diverged"
    return f"{100 * row['mean']:.1f} ± {100 * row['ci95']:.1f}"


if __name__ == "__main__":
    main()
