"""Held-out scores of a trained run under two adaptations: plain SGD at the inner rate (what ``torchmaml evaluate``
does) and iMAML's own proximal solve (``Implicit.solve``: the approximate minimiser of
``f(phi; support) + lambda/2 ||phi - w||^2``, the adaptation an ``implicit`` run is trained for).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/imaml_adaptation.py RUN [RUN ...] [--options '{lam=100.0}']

For every run: the benchmark's held-out test tasks (``eval_tasks``, every support size of ``eval_support_sizes``
or ``shots``), the metric after ``max(eval_steps)`` SGD steps and after the proximal solve, with the solver
options of the run's ``estimator_options`` when it trained ``implicit``, updated by ``--options`` (a TOML inline
table), and ``solver_steps`` raised by ``--solver-steps``. Mean ± 95% CI over the tasks; markdown to stdout.
"""

from __future__ import annotations

import argparse

import tomllib
import torch

from torchmaml.benchmark import benchmark_of
from torchmaml.estimators import get_estimator
from torchmaml.load import load_run
from torchmaml.statistics import mean_estimate


def proximal_scores(learner, estimator, batches, metric) -> torch.Tensor:
    """The metric of every task of ``batches`` at iMAML's proximal minimiser: ``[tasks]``."""
    problem = learner.inner_problem()
    meta = {"params": learner.functional.parameters(), "lrs": learner.rate_tensors()}
    scores = []
    for batch in batches:
        for i in range(batch.num_tasks):
            task = {name: value[i] for name, value in batch.tensors().items()}
            phi, _ = estimator.solve(problem, meta, task)
            with torch.no_grad():
                scores.append(metric(learner.functional(phi, task["query_x"]), task["query_y"]))
    return torch.stack(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--options", default="{}", help="implicit's options, over those the run trained with")
    parser.add_argument("--solver-steps", type=int, default=None, help="raise the solver's step cap")
    args = parser.parse_args()
    print("| run | support | SGD, max(eval_steps) steps | proximal solve |\n|---|---:|---:|---:|")
    for run in args.runs:
        learner, config = load_run(run)
        benchmark = benchmark_of(config)
        trained = dict(config.estimator_options) if config.estimator == "implicit" else {}
        options = {**trained, **tomllib.loads(f"o = {args.options}")["o"]}
        if args.solver_steps is not None:
            options["solver_steps"] = args.solver_steps
        estimator = get_estimator("implicit", options)
        steps = max(config.eval_steps)
        scale = benchmark.metric.scale
        for size, batches in benchmark.evaluation_batches(config, "test", None).items():
            sgd = torch.cat([learner.query_metric(b, steps, benchmark.metric.fn)[:, steps] for b in batches])
            proximal = proximal_scores(learner, estimator, batches, benchmark.metric.fn)
            cells = []
            for scores in (sgd, proximal):
                finite = torch.isfinite(scores)
                if not bool(finite.all()):
                    cells.append(f"diverged ({int((~finite).sum())} tasks)")
                    continue
                estimate = mean_estimate(scores)
                cells.append(f"{estimate.value * scale:.3f} ± {estimate.ci95 * scale:.3f}")
            print(f"| {run} | {size} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
