"""How long the Omniglot cache takes to build and load, and how long ``FewShotTasks.sample`` takes per batch.

Measured:

* with ``--omniglot ROOT``: the first ``load_omniglot`` (decodes the 32,460 PNGs and writes the cache
  into ``--cache-dir``, a fresh temporary folder by default) and a second one (reads the cache);
* the wall time of one ``sample(32, generator)`` for 5-way 1-shot and 20-way 5-shot, 15 queries per
  class, on the Vinyals training classes (4112 classes of 20 uint8 28x28 images; random pixels of that
  shape without ``--omniglot``): median, min and max over ``--repeats`` batches after 3 warm-up ones;
* with ``--meta-step``: for scale, the median wall time of one second-order ``MetaLearner.meta_step`` of
  ``conv4(ways=5)`` on a 5-way 1-shot batch of 32 tasks (inner_lr 0.4, 1 step; 1 warm-up, 3 timed), and
  the share of a meta-iteration that sampling takes.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampling.py --omniglot /work/shared/data/omniglot --meta-step
    .venv/bin/python benchmarks/sampling.py --threads 2 --repeats 200

The markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torchmaml import MetaLearner
from torchmaml.allocator import keep_freed_memory
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.omniglot import load_omniglot
from torchmaml.models import conv4

WORKLOADS = {"5-way 1-shot": (5, 1, 15), "20-way 5-shot": (20, 5, 15)}  # ways, shots, queries per class
TASKS = 32


def timed(function) -> tuple[float, object]:
    """``(milliseconds, result)`` of one call."""
    start = time.perf_counter()
    result = function()
    return (time.perf_counter() - start) * 1000, result


def omniglot_classes(root: Path | None, cache_dir: Path | None, rows: list[list[str]]) -> torch.Tensor:
    """The Vinyals training classes: real ones (timing the cache build and load) or random pixels."""
    if root is None:
        rows.append(["training classes", "random uint8 pixels, [4112, 20, 1, 28, 28]"])
        return torch.randint(0, 256, (4112, 20, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator())
    with tempfile.TemporaryDirectory() as scratch:
        folder = cache_dir or Path(scratch)
        build_ms, _ = timed(lambda: load_omniglot(root, cache_dir=folder))
        load_ms, data = timed(lambda: load_omniglot(root, cache_dir=folder))
        split_ms, train = timed(lambda: data.split_images("vinyals", "train"))
    rows.append(["training classes", f"Omniglot from {root}, Vinyals train, {tuple(train.shape)}"])
    rows.append(["first load_omniglot (build the cache)", f"{build_ms / 1000:.2f} s"])
    rows.append(["second load_omniglot (read the cache)", f"{load_ms:.0f} ms"])
    rows.append(["split_images('vinyals', 'train')", f"{split_ms:.0f} ms"])
    return train


def meta_step_ms(batch) -> float:
    """Median wall time of a second-order conv4 meta-step on ``batch`` (1 warm-up, 3 timed)."""
    torch.manual_seed(0)
    keep_freed_memory()  # opt-in glibc tuning, as the torchmaml command line does (torchmaml.allocator)
    learner = MetaLearner(conv4(ways=5), loss=F.cross_entropy, inner_lr=0.4, inner_steps=1, estimator="unrolled")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    learner.meta_step(batch, optimizer)
    return statistics.median(timed(lambda: learner.meta_step(batch, optimizer))[0] for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--omniglot", type=Path, help="an Omniglot folder (zips or unpacked folders)")
    parser.add_argument("--cache-dir", type=Path, help="where to build the cache (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--meta-step", action="store_true", help="also time one conv4 meta-step, for scale")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        [
            "machine",
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        ]
    ]
    train = omniglot_classes(args.omniglot, args.cache_dir, rows)
    generator = torch.Generator().manual_seed(0)
    sample_ms = {}
    for name, (ways, shots, queries) in WORKLOADS.items():
        tasks = FewShotTasks(train, ways, shots, queries)
        for _ in range(3):
            tasks.sample(TASKS, generator)
        times = [timed(lambda tasks=tasks: tasks.sample(TASKS, generator))[0] for _ in range(args.repeats)]
        sample_ms[name] = statistics.median(times)
        rows.append(
            [
                f"sample({TASKS}), {name}, {queries} queries/class",
                f"{sample_ms[name]:.2f} ms median ({min(times):.2f}-{max(times):.2f}, {args.repeats} batches)",
            ]
        )
    if args.meta_step:
        ways, shots, queries = WORKLOADS["5-way 1-shot"]
        step_ms = meta_step_ms(FewShotTasks(train, ways, shots, queries).sample(TASKS, generator))
        rows.append(
            [f"conv4 second-order meta_step, 5-way 1-shot, {TASKS} tasks", f"{step_ms / 1000:.2f} s median of 3"]
        )
        share = 100 * sample_ms["5-way 1-shot"] / (step_ms + sample_ms["5-way 1-shot"])
        rows.append(["sampling share of a 5-way 1-shot meta-iteration", f"{share:.2f} %"])
    print("| measurement | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
