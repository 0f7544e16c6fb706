"""Time and peak memory of a Bayesian MAML meta-step against MAML's, as a function of the particle count M.

Workloads (random data of the benchmarks' shapes, float32, one torch thread per child process):

* ``sinusoid``: the MLP 1-40-40-1, meta-batch 10, K = 10 support and 10 query points, one inner step;
* ``omniglot``: ``conv4(ways=5)`` on [1, 28, 28] images, 5-way 1-shot with 15 queries per class, meta-batch 4,
  one inner step.

Learners: ``maml`` (one network, the benchmark's loss, exact second order), ``emaml`` (M particles, gradient inner
steps, the Gaussian/categorical likelihood, exact second order), ``bmaml`` (M particles, one SVGD step, the chaser
loss with one leader step, exact second order). Each (workload, learner, M) runs in a fresh child process that
reports the median milliseconds of ``meta_step`` over the timed iterations (after warm-up ones) and the peak
resident set size minus the one before the first meta-step. The configurations are interleaved (every learner of
one M before the next M), and the table gives each time as a ratio to MAML's measured in the same round.

    .venv/bin/python benchmarks/bayesian_cost.py                       # both workloads, M = 1, 5, 10
    .venv/bin/python benchmarks/bayesian_cost.py --workloads sinusoid --particles 1,5 --iterations 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def one(workload: str, learner_kind: str, particles: int, warmup: int, iterations: int) -> dict:
    """Build the learner and a task batch, time ``iterations`` meta-steps after ``warmup``; in this process."""
    from torchmaml import MetaLearner, TaskBatch
    from torchmaml.bayesian import SVGD, CategoricalLikelihood, GaussianLikelihood, Particles
    from torchmaml.models import conv4
    from torchmaml.models.mlp import mlp

    torch.manual_seed(0)
    if workload == "sinusoid":
        model, loss, likelihood, lr = mlp(1, [40, 40], 1), F.mse_loss, GaussianLikelihood(), 0.01
        x = torch.rand(10, 20, 1) * 10 - 5
        batch = TaskBatch(x[:, :10], torch.sin(x[:, :10]), x[:, 10:], torch.sin(x[:, 10:]))
    else:
        model, loss, likelihood, lr = conv4(ways=5), F.cross_entropy, CategoricalLikelihood(), 0.4
        images = torch.randn(4, 80, 1, 28, 28)
        labels = torch.arange(5).repeat(16).expand(4, -1)
        batch = TaskBatch(images[:, :5], labels[:, :5], images[:, 5:], labels[:, 5:])
    options: dict = {"inner_lr": lr, "inner_steps": 1, "compile": False}
    if learner_kind == "maml":
        learner = MetaLearner(model, loss=loss, **options)
    else:
        model = Particles(model, particles, likelihood)
        svgd = learner_kind == "bmaml"
        learner = MetaLearner(
            model,
            loss=model.likelihood,
            estimator="chaser" if svgd else "unrolled",
            inner_update=SVGD() if svgd else None,
            **{**options, "inner_lr": lr / 10 if svgd else lr},
        )
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(warmup + iterations):
        start = time.perf_counter()
        learner.meta_step(batch, optimizer)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1000 * statistics.median(times), "mb": (peak - before) / 1024, "strategy": learner.strategy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="sinusoid,omniglot")
    parser.add_argument("--particles", default="1,5,10")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "LEARNER", "M"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload, kind, count = args.child
        print(json.dumps(one(workload, kind, int(count), args.warmup, args.iterations)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"torch {torch.__version__}, one thread per child, {args.iterations} timed meta-steps after {args.warmup}")
    for workload in args.workloads.split(","):
        print(f"\n### {workload}\n")
        print("| M | MAML ms | EMAML ms (× MAML) | BMAML ms (× MAML) | MAML MB | EMAML MB | BMAML MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for count in [int(m) for m in args.particles.split(",")]:
            row = {}
            for kind in ("maml", "emaml", "bmaml"):
                command = [sys.executable, __file__, "--child", workload, kind, str(count)]
                command += ["--warmup", str(args.warmup), "--iterations", str(args.iterations)]
                output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
                row[kind] = json.loads(output.strip().splitlines()[-1])
            maml = row["maml"]["ms"]
            print(
                f"| {count} | {maml:.1f} | {row['emaml']['ms']:.1f} ({row['emaml']['ms'] / maml:.1f}×) | "
                f"{row['bmaml']['ms']:.1f} ({row['bmaml']['ms'] / maml:.1f}×) | {row['maml']['mb']:.0f} | "
                f"{row['emaml']['mb']:.0f} | {row['bmaml']['mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
