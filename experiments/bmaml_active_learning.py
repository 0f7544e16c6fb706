"""The Bayesian MAML paper's active-learning experiment on sinusoid regression, for trained particle runs.

For each run (``torchmaml train`` with ``particles``) and each of ``--tasks`` held-out tasks of the run's sinusoid
family: ``--start`` labelled points, a pool of ``--pool`` unlabelled inputs and 100 test points (all noisy
observations, from the meta-test's seed stream); ``--rounds`` times, the ensemble adapts to the labelled points
(the run's inner update, ``--steps`` steps) and labels the pool input of highest predictive variance, or a random
one (``torchmaml.bayesian.active``). Prints the test MSE of the predictive mean (mean ± 95% CI over tasks) after
0..rounds added labels for both choices and their paired difference per task, and writes a figure.

    .venv/bin/python experiments/bmaml_active_learning.py RUN [RUN ...] --tasks 100 --rounds 5 --out FIGURE.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torchmaml.bayesian.active import active_learning_curve
from torchmaml.benchmark import sinusoid_tasks
from torchmaml.experiment import MAML
from torchmaml.plots import new_figure
from torchmaml.report import load_learner
from torchmaml.run import seeds
from torchmaml.run.seeds import evaluation_stream
from torchmaml.rundir import RunDir
from torchmaml.statistics import mean_estimate


def curves(run: Path, tasks: int, start: int, pool: int, rounds: int, steps: int) -> dict[str, torch.Tensor]:
    """``{"variance": [tasks, rounds + 1], "random": ...}`` test MSEs of one run."""
    folder = RunDir(run)
    config = folder.config_for_this_machine()
    learner, _ = load_learner(folder, config, MAML)
    source = sinusoid_tasks(config)
    generator = seeds.generator(evaluation_stream(config.eval_seed, "active_learning"))
    functions = source.sample_functions(tasks, generator)
    labelled = source.batch_for(functions, start, pool, generator)
    test = source.batch_for(functions, 1, 100, generator)
    results = {}
    for choose in ("variance", "random"):
        chooser = torch.Generator().manual_seed(0)
        results[choose] = torch.stack(
            [
                active_learning_curve(
                    learner,
                    (labelled.support_x[i], labelled.support_y[i]),
                    (labelled.query_x[i], labelled.query_y[i]),
                    (test.query_x[i], test.query_y[i]),
                    rounds,
                    steps,
                    choose,
                    chooser,
                )
                for i in range(tasks)
            ]
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--start", type=int, default=5, help="labelled points before the first added one")
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="inner steps of each adaptation")
    parser.add_argument("--out", type=Path, default=None, help="figure (PNG)")
    args = parser.parse_args()
    figure = new_figure(figsize=(6, 4))
    axes = figure.subplots()
    header = "| run | choice | " + " | ".join(f"{args.start + r} labelled" for r in range(args.rounds + 1)) + " |"
    print(header)
    print("|---|---|" + "---:|" * (args.rounds + 1))
    counts = [args.start + r for r in range(args.rounds + 1)]
    for run in args.runs:
        results = curves(run, args.tasks, args.start, args.pool, args.rounds, args.steps)
        results["variance - random"] = results["variance"] - results["random"]  # paired: the same tasks and start
        for choose, scores in results.items():
            estimates = [mean_estimate(scores[:, r]) for r in range(args.rounds + 1)]
            cells = " | ".join(f"{e.value:.3f} ± {e.ci95:.3f}" for e in estimates)
            print(f"| {run.name} | {choose} | {cells} |", flush=True)
            if choose in ("variance", "random"):
                values, errors = [e.value for e in estimates], [e.ci95 for e in estimates]
                axes.errorbar(counts, values, errors, label=f"{run.name}, {choose}")
    if args.out is not None:
        axes.set_xlabel("labelled points")
        axes.set_ylabel("test MSE")
        axes.legend()
        figure.savefig(args.out, dpi=120, bbox_inches="tight")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
