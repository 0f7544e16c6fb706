"""Meta-iterations per second at 1 and 2 processes (``torchrun``, gloo, one torch thread each), and the share
of a two-process iteration spent in the all-reduce (communication plus waiting for the slower rank).

Workloads:

* ``W1``: sinusoid, the MAML paper's MLP, 25 tasks, one inner step (``speed.py``'s W1);
* ``W2``: conv4, 32 tasks x 5-way 1-shot, 15 queries per class, one inner step, second order (``speed.py``'s W2);
* ``navigation2d``: meta-RL, the preset's MAML-TRPO iteration (20 tasks x 20 trajectories), through
  ``torchmaml train`` (seconds per iteration from the run's metrics log; the all-reduce share is not
  separated there);
* ``half-cheetah-dir``: the same for half-cheetah (MuJoCo), with 16 tasks x 10 trajectories of 200 steps.

W1 and W2 run ``MetaLearner`` in a loop a user would write (``examples/data_parallel.py``): every rank draws
the same global batch, keeps its ``shard``, computes its meta-gradient, then ``task_mean`` (one bucketed
all-reduce) and an Adam step. The two world sizes alternate ``--rounds`` times in one run, so machine drift
hits both alike; the table gives medians and the speed-up ratio.

    .venv/bin/python benchmarks/distributed.py                     # every workload, 3 rounds
    .venv/bin/python benchmarks/distributed.py --workloads W2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ITERATIONS = {"W1": (10, 100), "W2": (1, 4)}  # (warm-up, timed)
RL_WORKLOADS = {  # preset: (iterations, overrides)
    "navigation2d": (6, []),
    "half-cheetah-dir": (3, ["meta_batch_size=16", "trajectories=10"]),
}


def worker(workload: str, warmup: int, timed: int) -> None:
    """One rank (or the single process) of a supervised workload; rank 0 prints one JSON line."""
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    from speed import build_workload

    from torchmaml import MetaLearner
    from torchmaml.distributed import shard, task_mean

    torch.set_num_threads(1)
    group = None
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
        group = dist.group.WORLD
    model, loss, inner_lr, batch = build_workload(workload)
    learner = MetaLearner(model, loss, inner_lr=inner_lr, compile=False)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    share = shard(batch, group) if group is not None else batch
    compute = reduce = total = 0.0
    for iteration in range(warmup + timed):
        start = time.perf_counter()
        grads, metrics = learner.meta_gradient(share)
        computed = time.perf_counter()
        if group is not None:
            grads, metrics = task_mean((grads, metrics), share.num_tasks, group)
        reduced = time.perf_counter()
        for name, parameter in learner.model.named_parameters():  # what learner.backward would add to .grad
            parameter.grad = grads["params"][name]
        optimizer.step()
        if iteration >= warmup:
            compute += computed - start
            reduce += reduced - computed
            total += time.perf_counter() - start
    if group is None or dist.get_rank() == 0:
        print(json.dumps({"seconds": total / timed, "reduce_share": reduce / total}), flush=True)
    if group is not None:
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # torch 2.13 can abort in the teardown of a process that used torch.func over gloo


def launch(processes: int, command: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, *command]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}", *command]


def supervised(workload: str, processes: int) -> dict[str, float]:
    warmup, timed = ITERATIONS[workload]
    command = launch(processes, [str(Path(__file__)), "--worker", workload, str(warmup), str(timed)])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{workload} at {processes} processes failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def meta_rl(workload: str, processes: int) -> dict[str, float]:
    """Seconds per meta-iteration of ``torchmaml train`` on an RL preset (rank 0's metrics log)."""
    iterations, overrides = RL_WORKLOADS[workload]
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        args = ["-m", "torchmaml", "train", "--config", workload, "--set", f"iterations={iterations}"]
        args += [item for key in overrides for item in ("--set", key)]
        args += ["--set", "pretrained_iterations=0", "--no-progress", "--out", str(run)]
        done = subprocess.run(
            launch(processes, args), capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        if done.returncode != 0:
            raise SystemExit(f"{workload} at {processes} processes failed:\n{done.stderr[-2000:]}")
        records = [json.loads(line) for line in (run / "metrics-maml.jsonl").read_text().splitlines()]
    seconds = (records[-1]["seconds"] - records[0]["seconds"]) / (len(records) - 1)  # the first one left out
    return {"seconds": seconds, "reduce_share": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W2,navigation2d,half-cheetah-dir")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for workload in workloads:
            for processes in (1, 2):
                result = meta_rl(workload, processes) if workload in RL_WORKLOADS else supervised(workload, processes)
                results.setdefault((workload, processes), []).append(result)
                print(f"round {round_ + 1}: {workload} x{processes}: {result}", file=sys.stderr, flush=True)
    print("| workload | s/iteration, 1 process | s/iteration, 2 processes | speed-up | all-reduce share, 2 proc. |")
    print("|---|---:|---:|---:|---:|")
    for workload in workloads:
        one = statistics.median(r["seconds"] for r in results[(workload, 1)])
        two = statistics.median(r["seconds"] for r in results[(workload, 2)])
        share = statistics.median(r["reduce_share"] for r in results[(workload, 2)])
        shown = "—" if share != share else f"{100 * share:.1f}%"
        print(f"| {workload} | {one:.4f} | {two:.4f} | {one / two:.2f}x | {shown} |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
