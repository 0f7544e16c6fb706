"""Where one meta-iteration of W2 spends its time: torch's profiler, grouped by kind of work.

W2 is ``benchmarks/speed.py``'s Omniglot-shaped workload (conv4, 64 filters, 32 tasks x 5-way 1-shot with 15
queries per class, 1 inner step, the ``loop`` strategy that ``auto`` picks for conv nets). After one untimed
meta-step, one more runs under ``torch.profiler``; every operator's self CPU time is put in one group:

- convolution (forward and backward kernels), batch norm (forward, backward, double backward), max-pooling,
  ReLU, layout copies (``copy_``/``clone``: memory-format conversions and contiguous copies), zero-fills,
  elementwise and reductions (``mul``, ``add``, ``sum``, ... of the autograd formulas and the optimiser),
  and the rest.

The table goes to stdout, with the step's wall time with and without the profiler. To profile another
version of torchmaml (the "before" of a change), put its ``src`` first on ``PYTHONPATH``::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_w2.py
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/old/checkout/src .venv/bin/python benchmarks/profile_w2.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_w2.py --estimator first_order
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from speed import build_workload
from torch.profiler import ProfilerActivity, profile

import torchmaml
from torchmaml import MetaLearner
from torchmaml.allocator import keep_freed_memory

GROUPS = (
    ("convolution", ("convolution", "conv2d", "mkldnn")),
    ("batch norm", ("batch_norm", "BatchNorm")),
    ("max-pooling", ("max_pool",)),
    ("ReLU", ("relu", "threshold", "clamp_min")),
    ("layout copies", ("copy_", "clone", "contiguous")),
    ("zero-fills", ("fill_", "zero_", "zeros")),
    (
        "elementwise and reductions",
        (
            "mul",
            "add",
            "sub",
            "div",
            "sum",
            "mean",
            "neg",
            "sqrt",
            "rsqrt",
            "pow",
            "exp",
            "log",
            "where",
            "gather",
            "max",
            "lerp",
            "addcmul",
            "addcdiv",
        ),
    ),
)


def group_of(name: str) -> str:
    """The group of the operator ``name`` (first match in ``GROUPS``), else ``"other"``."""
    for group, keys in GROUPS:
        if any(key in name for key in keys):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", default="unrolled", help="unrolled (second order) or first_order")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # opt-in glibc tuning, as the torchmaml command line does (torchmaml.allocator)
    model, loss, inner_lr, batch = build_workload("W2")
    learner = MetaLearner(model, loss=loss, inner_lr=inner_lr, inner_steps=1, estimator=args.estimator)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    learner.meta_step(batch, optimizer)
    start = time.perf_counter()
    learner.meta_step(batch, optimizer)
    plain = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        learner.meta_step(batch, optimizer)
        profiled = time.perf_counter() - start
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") or "Backward" in event.key:
            totals[group_of(event.key)] += event.self_cpu_time_total / 1e3
    overall = sum(totals.values())
    print(
        f"torchmaml from {torchmaml.__file__}; estimator {args.estimator}, strategy {learner.strategy}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"one meta-iteration: {plain * 1e3:.0f} ms ({profiled * 1e3:.0f} ms under the profiler)\n")
    print("| work | self CPU (ms) | share |\n|---|---:|---:|")
    for group, value in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"| {group} | {value:.0f} | {100 * value / overall:.0f}% |")
    print(f"| all operators | {overall:.0f} | 100% |")


if __name__ == "__main__":
    main()
