"""Half-cheetah throughput against MuJoCo's physical limit, as one table (environment steps per CPU second).

Rows, measured side by side in one process with one torch thread:

- ``mj_step limit``: gymnasium's HalfCheetah-v5 ``MjModel`` stepped alone, ``mj_step(model, data, nstep=5)``
  (frame skip 5: one environment step) on one ``MjData`` in a tight Python loop, controls precomputed. This
  is the physical limit every other row is a fraction of.
- ``mujoco.batch, no policy``: the ``T x N`` copies of a meta-batch as one ``mujoco.batch.Batch`` on one
  thread, controls precomputed (the twin's physics without the policy).
- ``sampling``: ``rollout`` of ``VectorEnvSampler`` (gymnasium ``SyncVectorEnv``) and of
  ``BatchedHalfCheetahSampler`` (the twin), the paper's policy (2 x 100 ReLU) with per-task parameters,
  ``tasks_per_round`` as the preset (20).
- ``meta-iteration``: one MAML-TRPO iteration of the ``half-cheetah-dir`` preset (``PolicyPhase.step`` of the
  trainer: sampling before and after adaptation, baseline, inner step, TRPO) with each sampler; the environment
  steps are the iteration's (two rollouts of the meta-batch).

The gymnasium rows run a smaller meta-batch (``--gym-tasks``; its rate barely depends on the width) to keep
the run short. Each row is the best of ``--repeats`` timed runs after one untimed warm-up (the best: the
machine is shared, and interference only ever slows a run down); the meta-iteration rows time consecutive
iterations. CPU time of this process (``time.process_time``) is the measure; wall-clock steps/s are shown
too, and the share of the CPU time spent in ``rollout`` (``sampling``; the rest of a meta-iteration is the
same work with either sampler, which give the same episodes). Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/half_cheetah.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/half_cheetah.py --quick --json half_cheetah.json

Three learning checks instead of the table: ``--adaptation 0.1 0.5`` (does one inner step of the preset improve
the return on a fixed direction? returns before/after, and their forward part ``sum_t d v_t``, over
``--tasks`` tasks), ``--trpo-forward MINUTES`` (plain TRPO without adaptation on running forward: does the
policy learn to run at all?) and ``--meta-signal BATCHES`` (how much of a TRPO meta-step's predicted
improvement holds on other meta-batches: the meta-gradient's signal against its sampling noise). And
``--preset-iterations N``: the CPU time of ``N`` meta-iterations as the preset trains (frame skip 1, the exact
Fisher), with their metrics, to compare code versions.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from mujoco.batch import Batch
from torch.func import grad, vmap

from torchmaml.checkpoint import load_checkpoint
from torchmaml.functional import FunctionalModel
from torchmaml.linalg import conjugate_gradient
from torchmaml.pytree import flatten
from torchmaml.rl.config import load_config
from torchmaml.rl.half_cheetah import CONTROL_COST, HalfCheetahDirEnv
from torchmaml.rl.half_cheetah_batched import BatchedHalfCheetahSampler
from torchmaml.rl.maml_trpo import fisher_vector_product_of, meta_update, post_adaptation_outputs, sample_phases
from torchmaml.rl.objectives import adapt, meta_objective
from torchmaml.rl.policy import GaussianMLPPolicy
from torchmaml.rl.sampler import VectorEnvSampler, per_task
from torchmaml.rl.train import MAML, PolicyPhase, build_policy, make_sampler

FRAME_SKIP = 5
TASKS_PER_ROUND = 20  # the half-cheetah presets'


def best_of(run: Callable[[], tuple[int, float]], repeats: int) -> dict:
    """``run()`` (returning its environment steps and the CPU seconds of its sampling) once untimed, then
    ``repeats`` times; the fastest run by CPU time, as steps, CPU seconds, steps per CPU second, steps per wall
    second and the sampling's share of the CPU time."""
    run()
    best: tuple[float, float, int, float] | None = None
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        steps, sampling_cpu = run()
        cpu, wall = time.process_time() - cpu_started, time.perf_counter() - started
        if best is None or cpu < best[0]:
            best = (cpu, wall, steps, sampling_cpu)
    cpu, wall, steps, sampling_cpu = best
    return {
        "steps": steps,
        "cpu_seconds": cpu,
        "steps_per_cpu_second": steps / cpu,
        "steps_per_second": steps / wall,
        "sampling_cpu_seconds": sampling_cpu,
    }


def everything(run: Callable[[], int]) -> Callable[[], tuple[int, float]]:
    """A run that is all sampling (or all physics): its steps and its own CPU time."""

    def timed() -> tuple[int, float]:
        started = time.process_time()
        steps = run()
        return steps, time.process_time() - started

    return timed


def mj_step_limit(env_steps: int) -> Callable[[], int]:
    """``env_steps`` environment steps of one ``MjData``: ``mj_step(nstep=5)`` with precomputed controls."""
    env = HalfCheetahEnv()
    model, data = env.model, env.data
    controls = np.random.default_rng(0).uniform(-1.0, 1.0, (env_steps, model.nu))
    env.reset(seed=0)

    def run() -> int:
        for control in controls:
            data.ctrl[:] = control
            mujoco.mj_step(model, data, nstep=FRAME_SKIP)
        return env_steps

    return run


def batch_physics(copies: int, env_steps_per_copy: int) -> Callable[[], int]:
    """``copies`` simulations as one ``mujoco.batch.Batch`` on one thread, ``env_steps_per_copy`` steps each."""
    model = HalfCheetahEnv().model
    batch = Batch(model, nsim=copies, nthread=1)
    ctrl = batch.bind("ctrl")
    controls = np.random.default_rng(0).uniform(-1.0, 1.0, (env_steps_per_copy, copies, model.nu))
    batch.reset()

    def run() -> int:
        for control in controls:
            ctrl[:] = control
            batch.step(nstep=FRAME_SKIP)
        return copies * env_steps_per_copy

    return run


def sampling(sampler, tasks: int, trajectories: int) -> Callable[[], int]:
    """One ``rollout`` of ``tasks x trajectories`` with the paper's policy, per-task parameters."""
    torch.manual_seed(0)
    policy = FunctionalModel(GaussianMLPPolicy(sampler.observation_dim, sampler.action_dim))
    params = {n: p + 0.01 * torch.randn(p.shape) for n, p in per_task(policy.parameters(), tasks).items()}
    generator = torch.Generator().manual_seed(0)
    task_values = sampler.sample_tasks(tasks, generator)
    return lambda: sampler.rollout(policy, params, task_values, trajectories, generator).num_steps()


def meta_iteration(
    sampler_kind: str, tasks: int, trajectories: int, frame_skip: int | None = 5
) -> tuple[Callable[[], tuple[int, float]], object, list[dict]]:
    """One iteration of the ``half-cheetah-dir`` preset's MAML-TRPO with ``sampler_kind`` (its steps, and the CPU
    seconds spent in the sampler's ``rollout``); the sampler too (to close), and the list each iteration's
    metrics are appended to. By default at gymnasium's frame skip 5 with the ``post_adaptation`` Fisher, as every
    row of the table (the table's setting since it was first measured; ``None``: the preset's own, frame skip 1
    and the exact Fisher)."""
    overrides = [f'sampler="{sampler_kind}"', f"meta_batch_size={tasks}", f"trajectories={trajectories}"]
    overrides += [f"frame_skip={frame_skip}", 'fisher="post_adaptation"'] if frame_skip is not None else []
    config = load_config("half-cheetah-dir", overrides)
    sampler = make_sampler(config)
    policy = build_policy(config, sampler.observation_dim, sampler.action_dim)
    phase = PolicyPhase(config, sampler, FunctionalModel(policy), MAML)
    rollout, sampling_cpu, iteration = sampler.rollout, [0.0], [0]

    def timed_rollout(*args, **kwargs):
        started = time.process_time()
        episodes = rollout(*args, **kwargs)
        sampling_cpu[0] += time.process_time() - started
        return episodes

    sampler.rollout = timed_rollout  # this instance only

    records: list[dict] = []

    def run() -> tuple[int, float]:
        before, sampling_cpu[0] = phase.env_steps, 0.0
        iteration[0] += 1
        records.append(phase.step(iteration[0]))
        return phase.env_steps - before, sampling_cpu[0]

    return run, sampler, records


def preset_iterations(tasks: int, trajectories: int, count: int) -> None:
    """``count`` meta-iterations of the preset as it trains (frame skip 1, the exact Fisher), from its initial
    policy and seed 0: CPU seconds of each, the share spent sampling, and the iteration's metrics (equal numbers
    across code versions mean the same computation)."""
    run, _, records = meta_iteration("batched", tasks, trajectories, frame_skip=None)
    print(f"{'iteration':>9}{'CPU s':>8}{'sampling':>10}{'steps/CPU-s':>13}   return after, KL, improvement")
    for index in range(1, count + 1):
        started = time.process_time()
        steps, sampling = run()
        cpu = time.process_time() - started
        metrics = records[-1]
        numbers = f"{metrics['return_after']!r} {metrics['kl']!r} {metrics['improvement']!r}"
        print(f"{index:>9}{cpu:>8.2f}{sampling / cpu:>10.0%}{steps / cpu:>13,.0f}   {numbers}", flush=True)


def forward_returns(episodes) -> torch.Tensor:
    """The forward part of every trajectory's return, ``sum_t d v_t``: the reward plus the control cost
    ``0.05 ||clip(a_t)||^2``, per task ``[T]`` (averaged over its trajectories)."""
    control = CONTROL_COST * episodes.actions.clamp(-1.0, 1.0).square().sum(-1)
    return ((episodes.rewards + control) * episodes.mask).sum(-1).mean(1)


def mean_and_error(values: torch.Tensor) -> str:
    """``mean ± standard error`` over tasks."""
    return f"{values.mean():.1f} ± {values.std() / values.shape[0] ** 0.5:.1f}"


def adaptation_check(tasks: int, trajectories: int, lrs: list[float]) -> None:
    """One inner step of the ``half-cheetah-dir`` preset (its policy-gradient step on ``trajectories`` episodes
    per task, advantages from its baseline) at its initial policy, on ``tasks`` tasks of direction +1 and then
    -1: the mean return before and after, and its forward part, over tasks (the same pre-adaptation episodes
    for every step size)."""
    print(f"{'direction':>9}{'inner lr':>10}{'return before':>16}{'return after':>16}{'forward before':>16}", end="")
    print(f"{'forward after':>16}{'after - before':>16}")
    for direction in (1.0, -1.0):
        for lr in lrs:
            config = load_config("half-cheetah-dir", [f"meta_batch_size={tasks}", f"trajectories={trajectories}"])
            sampler = make_sampler(config)
            policy = FunctionalModel(build_policy(config, sampler.observation_dim, sampler.action_dim))
            task_values = torch.full((tasks, 1), direction)
            generator = torch.Generator().manual_seed(0)
            phases = sample_phases(sampler, policy, policy.parameters(), task_values, generator, config, [lr])
            before, after = (p.episodes.returns().mean(1) for p in phases)
            forward = [forward_returns(p.episodes) for p in phases]
            print(
                f"{direction:>+9.0f}{lr:>10g}{mean_and_error(before):>16}{mean_and_error(after):>16}"
                f"{mean_and_error(forward[0]):>16}{mean_and_error(forward[1]):>16}"
                f"{mean_and_error(after - before):>16}",
                flush=True,
            )


def trpo_forward(tasks: int, trajectories: int, minutes: float) -> None:
    """Plain TRPO (no adaptation, ``K = 0``) with the ``half-cheetah-dir`` preset's policy, baseline and TRPO
    settings, every task running forward (+1): ``tasks x trajectories`` episodes per iteration, for
    ``minutes``; one line per iteration (mean return, its forward part, KL, accepted, steps so far)."""
    config = load_config("half-cheetah-dir", [f"meta_batch_size={tasks}", f"trajectories={trajectories}"])
    sampler = make_sampler(config)
    policy = FunctionalModel(build_policy(config, sampler.observation_dim, sampler.action_dim))
    params, generator = policy.parameters(), torch.Generator().manual_seed(0)
    task_values, started, steps, iteration = torch.ones(tasks, 1), time.perf_counter(), 0, 0
    print(f"{'iteration':>9}{'return':>10}{'forward':>10}{'kl':>9}{'accepted':>9}{'env steps':>12}{'minutes':>9}")
    while time.perf_counter() - started < 60 * minutes:
        iteration += 1
        phases = sample_phases(sampler, policy, params, task_values, generator, config, [])
        params, metrics = meta_update(policy, params, phases, config, [], config.estimator)
        steps += phases[0].episodes.num_steps()
        forward = float(forward_returns(phases[0].episodes).mean())
        print(
            f"{iteration:>9}{metrics['return_before']:>10.1f}{forward:>10.1f}{metrics['kl']:>9.4f}"
            f"{metrics['accepted']:>9.0f}{steps:>12}{(time.perf_counter() - started) / 60:>9.1f}",
            flush=True,
        )


def meta_signal(tasks: int, trajectories: int, batches: int, checkpoint: str | None, frame_skip: int | None) -> None:
    """Is a meta-step signal or noise? At the preset's initial policy (or a run's ``checkpoint``), ``batches``
    independent meta-batches ``b`` each give a mean gradient ``g_b`` and the TRPO direction ``s_b = F_b^-1 g_b``
    (conjugate gradient on the ``post_adaptation`` Fisher, without the adaptation's Jacobian, whatever the
    preset's ``fisher``). A step along ``s_a`` raises batch ``a``'s surrogate by about
    ``g_a . s_a``; on another batch, ``g_b . s_a``. Their ratio ``rho`` (mean over ordered pairs) is the share
    of a step's predicted improvement that is not batch ``a``'s sampling noise: 1 for an exact gradient, 0 for
    pure noise. Rows: the meta-gradient with the preset's ``plain`` estimator and ``first_order`` (without the
    second-order term), and, for scale, plain TRPO without adaptation with every task running forward (the
    setting of ``--trpo-forward``, which learns); the mean Euclidean cosine of ``g_a`` and ``g_b`` beside it.
    ``frame_skip`` overrides the preset's time step (5: gymnasium's)."""
    settings = [f"meta_batch_size={tasks}", f"trajectories={trajectories}"]
    config = load_config("half-cheetah-dir", settings + [f"frame_skip={frame_skip}"] * (frame_skip is not None))
    sampler = make_sampler(config)
    policy = FunctionalModel(build_policy(config, sampler.observation_dim, sampler.action_dim))
    params = load_checkpoint(checkpoint)["policy"] if checkpoint else policy.parameters()
    every = slice(None, None, config.fisher_subsample)

    def direction(phases, lrs, estimator):
        """``(g, F^-1 g)`` of one meta-batch: the mean meta-gradient and the TRPO direction."""
        inner, outer = [p.phase() for p in phases[:-1]], phases[-1]
        task_objective = vmap(functools.partial(meta_objective, policy, lrs=lrs, estimator=estimator), (None, 0, 0, 0))
        value = torch.zeros(outer.episodes.mask.shape[0])
        g = flatten(grad(lambda w: task_objective(w, inner, outer.phase(), value)[0].mean())(params))
        with torch.no_grad():
            adapted = per_task(params, tasks)
            if inner:
                adapted = vmap(lambda task_inner: adapt(policy, params, task_inner, lrs, "first_order"))(inner)
        observations, mask = outer.episodes.observations[:, every], outer.episodes.mask[:, every]
        outputs = post_adaptation_outputs(
            policy, params, inner, adapted, observations, lrs, estimator, "post_adaptation"
        )
        log_std = outputs(params)[1].detach()
        product = fisher_vector_product_of(outputs, params, log_std, mask, config.cg_damping)
        return g, conjugate_gradient(product, g, config.cg_iterations, tolerance=1e-10)

    rows = {"meta-gradient, plain": [], "meta-gradient, first_order": [], "TRPO forward, no adaptation": []}
    generator = torch.Generator().manual_seed(0)
    for _ in range(batches):
        task_values = sampler.sample_tasks(tasks, generator)
        phases = sample_phases(sampler, policy, params, task_values, generator, config, [config.inner_lr])
        rows["meta-gradient, plain"].append(direction(phases, [config.inner_lr], "plain"))
        rows["meta-gradient, first_order"].append(direction(phases, [config.inner_lr], "first_order"))
        forward = sample_phases(sampler, policy, params, torch.ones(tasks, 1), generator, config, [])
        rows["TRPO forward, no adaptation"].append(direction(forward, [], "plain"))
    print(f"{'gradient':<30}{'rho':>8}{'cosine':>8}   rho per pair")
    for name, pairs in rows.items():
        rhos, cosines = [], []
        for a, (g_a, s_a) in enumerate(pairs):
            for b, (g_b, _) in enumerate(pairs):
                if a != b:
                    rhos.append(float(g_b @ s_a / (g_a @ s_a)))
                    cosines.append(float(g_a @ g_b / (g_a.norm() * g_b.norm())))
        print(f"{name:<30}{np.mean(rhos):>8.3f}{np.mean(cosines):>8.3f}   {' '.join(f'{r:.3f}' for r in rhos)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40, help="meta-batch of the twin's rows (preset: 40)")
    parser.add_argument("--trajectories", type=int, default=20, help="trajectories per task (preset: 20)")
    parser.add_argument("--gym-tasks", type=int, help="meta-batch of the gymnasium rows (default: --tasks)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 tasks for the twin, 1 for gymnasium")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--adaptation",
        type=float,
        nargs="+",
        metavar="LR",
        help="instead: returns before and after one inner step of these sizes at the preset's initial policy",
    )
    parser.add_argument(
        "--trpo-forward", type=float, metavar="MINUTES", help="instead: plain TRPO on running forward, this long"
    )
    parser.add_argument(
        "--meta-signal", type=int, metavar="BATCHES", help="instead: signal and noise of the meta-gradient"
    )
    parser.add_argument(
        "--preset-iterations", type=int, metavar="N", help="instead: CPU time of N meta-iterations as the preset trains"
    )
    parser.add_argument("--checkpoint", help="--meta-signal at this checkpoint's policy (default: the initial one)")
    parser.add_argument("--frame-skip", type=int, help="--meta-signal with this time step (default: the preset's)")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.gym_tasks = 8, 1
    torch.set_num_threads(1)
    if args.adaptation:
        adaptation_check(args.tasks, args.trajectories, args.adaptation)
        return
    if args.trpo_forward:
        trpo_forward(args.tasks, args.trajectories, args.trpo_forward)
        return
    if args.preset_iterations:
        preset_iterations(args.tasks, args.trajectories, args.preset_iterations)
        return
    if args.meta_signal:
        meta_signal(args.tasks, args.trajectories, args.meta_signal, args.checkpoint, args.frame_skip)
        return
    tasks, n = args.tasks, args.trajectories
    gym_tasks = args.gym_tasks or tasks
    gym = VectorEnvSampler(HalfCheetahDirEnv, n, min(TASKS_PER_ROUND, gym_tasks))
    twin = BatchedHalfCheetahSampler(HalfCheetahDirEnv, tasks_per_round=min(TASKS_PER_ROUND, tasks))
    gym_iteration, gym_iteration_sampler, _ = meta_iteration("gymnasium", gym_tasks, n)
    twin_iteration, _, _ = meta_iteration("batched", tasks, n)
    rows = [
        ("mj_step limit (one MjData)", "1", everything(mj_step_limit(20_000))),
        ("mujoco.batch, no policy", f"{tasks} x {n}", everything(batch_physics(tasks * n, 50))),
        ("sampling, gymnasium SyncVectorEnv", f"{gym_tasks} x {n}", everything(sampling(gym, gym_tasks, n))),
        ("sampling, batched twin", f"{tasks} x {n}", everything(sampling(twin, tasks, n))),
        ("meta-iteration, gymnasium sampler", f"{gym_tasks} x {n}", gym_iteration),
        ("meta-iteration, batched twin", f"{tasks} x {n}", twin_iteration),
    ]
    header = f"{'what':<36}{'tasks x traj':>14}{'env steps':>11}{'CPU s':>8}{'steps/CPU-s':>13}"
    print(header + f"{'steps/s':>10}{'of limit':>10}{'sampling':>10}")
    results, limit = [], None
    for name, batch, run in rows:
        row = {"what": name, "batch": batch, **best_of(run, args.repeats)}
        limit = limit or row["steps_per_cpu_second"]
        row["fraction_of_limit"] = row["steps_per_cpu_second"] / limit
        results.append(row)
        print(
            f"{name:<36}{batch:>14}{row['steps']:>11}{row['cpu_seconds']:>8.2f}{row['steps_per_cpu_second']:>13.0f}"
            f"{row['steps_per_second']:>10.0f}{row['fraction_of_limit']:>10.1%}"
            f"{row['sampling_cpu_seconds'] / row['cpu_seconds']:>10.0%}",
            flush=True,
        )
    gym.close()
    gym_iteration_sampler.close()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
