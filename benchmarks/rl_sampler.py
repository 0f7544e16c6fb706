"""Environment steps per second of the meta-RL samplers (``torchmaml.rl.sampler``), as a table.

Each row rolls out the paper's Gaussian MLP policy (2 x 100 ReLU) with per-task parameters for ``T`` tasks x
``N`` trajectories over the full horizon and counts the environment steps inside episodes (2D navigation
episodes can end early at the goal). The time includes the policy's forward passes and the noise; the first
rollout (warm-up, worker start-up) is not timed; the median of ``--repeats`` timed rollouts is reported, in
wall-clock and in CPU time of the main process (the column to compare on a shared machine; it leaves out the
asynchronous workers' own CPU time).

Rows: 2D navigation on the batched tensor environment and, for comparison, on ``gymnasium.vector`` (one
Python environment per trajectory); half-cheetah (MuJoCo) on ``gymnasium.vector.SyncVectorEnv`` and on
``AsyncVectorEnv`` (one worker process per trajectory). Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_sampler.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_sampler.py --quick --json sampler.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from torchmaml.functional import FunctionalModel
from torchmaml.rl.navigation import Navigation2DEnv
from torchmaml.rl.policy import GaussianMLPPolicy
from torchmaml.rl.sampler import BatchedNavigationSampler, VectorEnvSampler, per_task


def measure(sampler, tasks: int, trajectories: int, repeats: int) -> dict:
    torch.manual_seed(0)
    policy = FunctionalModel(GaussianMLPPolicy(sampler.observation_dim, sampler.action_dim))
    params = per_task(policy.parameters(), tasks)
    generator = torch.Generator().manual_seed(0)
    task_values = sampler.sample_tasks(tasks, generator)
    sampler.rollout(policy, params, task_values, trajectories, generator)  # warm-up
    times, cpu_times, steps = [], [], 0
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        episodes = sampler.rollout(policy, params, task_values, trajectories, generator)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
        steps = episodes.num_steps()
    seconds, cpu_seconds = statistics.median(times), statistics.median(cpu_times)
    return {
        "steps": steps,
        "seconds": seconds,
        "steps_per_second": steps / seconds,
        "cpu_seconds": cpu_seconds,
        "steps_per_cpu_second": steps / cpu_seconds,
    }


def rows(quick: bool) -> list[tuple[str, int, int, object]]:
    """(name, tasks, trajectories, sampler factory)."""
    from torchmaml.rl.half_cheetah import HalfCheetahDirEnv  # needs gymnasium[mujoco]

    table = [
        ("navigation, batched tensors", 20, 20, lambda: BatchedNavigationSampler()),
        ("navigation, batched tensors", 40, 20, lambda: BatchedNavigationSampler()),
        ("navigation, gymnasium sync", 2, 20, lambda: VectorEnvSampler(Navigation2DEnv, 20, 2)),
        ("half-cheetah-dir, sync", 1, 20, lambda: VectorEnvSampler(HalfCheetahDirEnv, 20, 1)),
        ("half-cheetah-dir, sync", 4, 20, lambda: VectorEnvSampler(HalfCheetahDirEnv, 20, 4)),
        ("half-cheetah-dir, async (2 workers)", 1, 2, lambda: VectorEnvSampler(HalfCheetahDirEnv, 2, 1, True)),
        ("half-cheetah-dir, sync (same width)", 1, 2, lambda: VectorEnvSampler(HalfCheetahDirEnv, 2, 1)),
    ]
    if not quick:
        table.insert(5, ("half-cheetah-dir, sync", 20, 20, lambda: VectorEnvSampler(HalfCheetahDirEnv, 20, 20)))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="skip the largest half-cheetah batch")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    header = f"{'sampler':<38}{'tasks x traj':>14}{'horizon':>9}{'steps':>9}{'wall s':>8}{'steps/s':>10}"
    print(header + f"{'CPU s':>8}{'steps/CPU-s':>13}")
    for name, tasks, trajectories, factory in rows(args.quick):
        with factory() as sampler:
            row = {"sampler": name, "tasks": tasks, "trajectories": trajectories, "horizon": sampler.horizon}
            row.update(measure(sampler, tasks, trajectories, args.repeats))
        results.append(row)
        print(
            f"{name:<38}{f'{tasks} x {trajectories}':>14}{row['horizon']:>9}{row['steps']:>9}"
            f"{row['seconds']:>8.2f}{row['steps_per_second']:>10.0f}"
            f"{row['cpu_seconds']:>8.2f}{row['steps_per_cpu_second']:>13.0f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
