"""Where a regression particle ensemble's predictive NLL comes from: the shape of its mixture or the level of its
noise, for trained sinusoid particle runs.

For each run (``torchmaml train`` with ``particles``) the ensemble adapts to each of ``--tasks`` held-out tasks of
the meta-test (``--support`` examples, ``--steps`` inner steps of the run's own rule, the query points of
``eval_query_size``) and its mixture ``(1/M) sum_m N(mu_m(x), (c sigma_m)^2)`` is scored on the query set:

- ``nll``: the predictive NLL per query point as trained (``c = 1``), what ``torchmaml evaluate`` reports;
- ``oracle scale``: with the best ``c`` of each task (a grid), a bound on what a per-task noise level could reach
  with the same particles;
- ``global scale``: with the one ``c`` best over all tasks (what recalibrating the noise by a constant factor gives);
- ``constant noise``: with every ``sigma_m`` replaced by the one value best over all tasks.

and it prints the adapted noise ``mean_m sigma_m``, the particles' spread (root mean over query points of the
variance of ``mu_m(x)`` over particles), the root mean squared error of the mixture mean on the query and support
sets, the correlation over tasks of the logs of the two RMSEs (how much the support residuals, the only per-task
signal of the noise's inner steps, say about the query error), the slope of the least-squares line of log noise
on log query RMSE over tasks (1: the noise grows in proportion to the task's error), and the quartiles over tasks
of noise / query RMSE. Mean over tasks throughout.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.bmaml_nll_decomposition RUN [RUN ...] --tasks 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torchmaml.bayesian import uncertainty
from torchmaml.bayesian.likelihood import GaussianLikelihood
from torchmaml.benchmark import benchmark_of
from torchmaml.experiment import MAML
from torchmaml.report import load_learner
from torchmaml.rundir import RunDir

SCALES = torch.linspace(0.1, 3.0, 59)  # the grid of noise factors c and of constant noise levels


def task_statistics(
    means: torch.Tensor, stds: torch.Tensor, y: torch.Tensor, support_rmse: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One task's numbers from its adapted particles' query means ``[M, N, 1]``, noise ``[M, 1, 1]`` and targets
    ``[N, 1]``, and the mixture mean's RMSE on the support set: the NLL at every factor of ``SCALES`` (``scaled``)
    and at every constant noise (``constant``), the mean noise, the particles' spread and the mixture mean's RMSE
    on the query set."""
    return {
        "support_rmse": support_rmse,
        "scaled": torch.stack([uncertainty.gaussian_mixture_nll(means, stds * c, y) for c in SCALES]),
        "constant": torch.stack([uncertainty.gaussian_mixture_nll(means, torch.full_like(stds, c), y) for c in SCALES]),
        "noise": stds.mean(),
        "spread": means.var(0, unbiased=False).mean().sqrt(),
        "query_rmse": mixture_rmse(means, y),
    }


def mixture_rmse(means: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The root mean squared error of the mixture mean ``(1/M) sum_m mu_m(x)`` (means ``[M, N, 1]``)."""
    return (uncertainty.mixture_mean(means) - y).pow(2).mean().sqrt()


def decomposition(statistics: list[dict[str, torch.Tensor]]) -> dict[str, float | list[float]]:
    """The table row of a run from its tasks' ``task_statistics`` (module docstring)."""
    stacked = {name: torch.stack([s[name] for s in statistics]) for name in statistics[0]}
    as_trained = int(torch.argmin((SCALES - 1).abs()))
    ratio = stacked["noise"] / stacked["query_rmse"]
    logs = torch.stack([stacked["support_rmse"].log(), stacked["query_rmse"].log()])
    return {
        "nll": float(stacked["scaled"][:, as_trained].mean()),
        "oracle scale": float(stacked["scaled"].min(1).values.mean()),
        "global scale": float(stacked["scaled"].mean(0).min()),
        "constant noise": float(stacked["constant"].mean(0).min()),
        "noise": float(stacked["noise"].mean()),
        "spread": float(stacked["spread"].mean()),
        "query RMSE": float(stacked["query_rmse"].mean()),
        "support RMSE": float(stacked["support_rmse"].mean()),
        "log RMSE correlation": float(torch.corrcoef(logs)[0, 1]),
        "noise slope": float(slope(stacked["query_rmse"].log(), stacked["noise"].log())),
        "noise / query RMSE quartiles": torch.quantile(
            ratio, torch.tensor([0.25, 0.5, 0.75], dtype=ratio.dtype)
        ).tolist(),
    }


def slope(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The slope of the least-squares line of ``y`` on ``x``: ``cov(x, y) / var(x)``."""
    centred = x - x.mean()
    return (centred * (y - y.mean())).sum() / centred.pow(2).sum()


def run_statistics(run: Path, tasks: int, support: int, steps: int) -> list[dict[str, torch.Tensor]]:
    """Every task's ``task_statistics`` for one run; ``SystemExit`` with one line for a run that is not a
    regression particle ensemble or has no evaluation set of ``support`` examples."""
    folder = RunDir(run)
    config = folder.config_for_this_machine()
    learner, _ = load_learner(folder, config, MAML)
    likelihood = learner.loss
    if not isinstance(likelihood, GaussianLikelihood):
        raise SystemExit(f"{run}: not a regression particle run (train it with particles and a Gaussian likelihood)")
    if support not in config.eval_support_sizes:
        raise SystemExit(f"--support {support}: {run} evaluates with {config.eval_support_sizes} support examples")
    statistics = []
    for batch in benchmark_of(config).evaluation_batches(config, "test", tasks)[support]:
        for task in range(batch.num_tasks):
            fast = learner.adapt(batch.support_x[task], batch.support_y[task], steps=steps)
            with torch.no_grad():
                query, fitted = fast(batch.query_x[task]), fast(batch.support_x[task])
            support_rmse = mixture_rmse(fitted["outputs"], batch.support_y[task])
            statistics.append(
                task_statistics(query["outputs"], likelihood.stds(query), batch.query_y[task], support_rmse)
            )
    return statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--support", type=int, default=10, help="support examples (one of eval_support_sizes)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    names = ["nll", "oracle scale", "global scale", "constant noise", "noise", "spread", "query RMSE", "support RMSE"]
    names += ["log RMSE correlation", "noise slope"]
    print("| run | " + " | ".join(names) + " | noise / query RMSE, quartiles |")
    print("|---|" + "---:|" * len(names) + "---|")
    for run in args.runs:
        row = decomposition(run_statistics(run, args.tasks, args.support, args.steps))
        quartiles = " / ".join(f"{q:.2f}" for q in row["noise / query RMSE quartiles"])
        cells = " | ".join(f"{row[name]:.3f}" for name in names)
        print(f"| {run} | {cells} | {quartiles} |", flush=True)


if __name__ == "__main__":
    main()
