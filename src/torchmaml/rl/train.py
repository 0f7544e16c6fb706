"""Meta-training: sample tasks -> adapt -> TRPO -> log -> checkpoint, resumable; ``train`` is the entry point.

    config = torchmaml.rl.load_config("navigation2d", ["iterations=200"])
    torchmaml.rl.train(config, "runs/nav")      # then torchmaml.rl.evaluate("runs/nav")

A run folder (``torchmaml.rundir.RunDir``) holds ``run.toml`` (the species, ``rl``), ``config.toml`` (the
resolved configuration), one JSONL line of metrics per iteration (``metrics-maml.jsonl``: returns before/after
adaptation, TRPO's KL and improvement, whether the step was skipped, cumulative training wall-clock and CPU
seconds, environment steps), TensorBoard scalars (``tensorboard/<phase>``, with the extra), periodic
checkpoints ``checkpoints/<phase>-<iteration>.pt`` and the final ``checkpoint-<phase>.pt``
(``torchmaml.checkpoint``: atomic, checksummed, plain tensors and numbers: the policy parameters, the
task/noise generator's state and every global RNG state), and ``learning_curve.png``.
Phases: ``maml`` and, if ``pretrained_iterations > 0``, ``pretrained`` (TRPO without adaptation on random
tasks: the paper's "pretrained" baseline). ``train(..., resume=True)`` continues every unfinished phase from
its newest valid checkpoint with the folder's own configuration; everything a run draws comes from one
``torch.Generator`` per phase, so a run killed at any instant (SIGKILL included) and resumed repeats the
uninterrupted one bit for bit. Under ``torchrun`` the ranks share each meta-batch's tasks and reduce the TRPO
step's means over all of them (``rl.maml_trpo``): the run is the one-process run up to rounding. On an
error or ``KeyboardInterrupt`` the sampler's worker processes (if any) are shut down before the exception
propagates; the last periodic checkpoint is kept.

The runtime is the one of every species (``torchmaml.run.trainer.Trainer``): no symbolic link followed, a torn
metrics line dropped on resume, SIGINT/SIGTERM finish the iteration and write a stop checkpoint
(``Interrupted``), a checkpoint of another configuration refused, an existing run replaced only with
``overwrite``, a time limit, and the divergence guard: a meta-step with a non-finite return, loss or
gradient leaves the policy as it was (``skipped``); ``MAX_CONSECUTIVE_SKIPS`` of them in a row, or a step
that leaves non-finite policy parameters, stop the run with a ``DivergenceError`` naming the last good
checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchmaml.checkpoint import CheckpointError
from torchmaml.distributed import task_range
from torchmaml.errors import ConfigError
from torchmaml.functional import FunctionalModel, Params
from torchmaml.rl.config import RLConfig, build_config
from torchmaml.rl.maml_trpo import meta_update, sample_phases
from torchmaml.rl.navigation import HORIZON as NAVIGATION_HORIZON
from torchmaml.rl.navigation import Navigation2DEnv
from torchmaml.rl.plots import plot_learning_curve
from torchmaml.rl.policy import GaussianMLPPolicy, check_policy
from torchmaml.rl.sampler import BatchedNavigationSampler, Sampler, VectorEnvSampler
from torchmaml.run import seeds
from torchmaml.run.config_io import read_toml, to_toml
from torchmaml.run.hooks import DivergenceGuard, Metrics, Progress, TensorBoard, TimeLimit
from torchmaml.run.metrics_log import read_records
from torchmaml.run.phases import train_phases
from torchmaml.run.resume import extended
from torchmaml.run.seeds import model_seed, task_stream
from torchmaml.run.team import SOLO, Team
from torchmaml.run.trainer import Trainer
from torchmaml.rundir import EXTENSIBLE_KEYS, RunDir

MAML, PRETRAINED = "maml", "pretrained"
MAX_CONSECUTIVE_SKIPS = 20  # as the supervised default; not a config key, so saved runs keep their digest


def make_sampler(config: RLConfig, processes: int = 1) -> Sampler:
    """The sampler of ``config.env`` and ``config.sampler``: ``batched`` steps every environment of a round
    together (tensors for navigation; ``mujoco.batch`` for half-cheetah, ``tasks_per_round`` tasks per round),
    ``gymnasium`` uses ``gymnasium.vector`` with ``tasks_per_round`` tasks per round. A round is at most a
    process's largest share of a meta-batch (``processes``), so no round simulates padding copies. For
    half-cheetah both give the same episodes (bit for bit: the same rounds)."""
    if config.env == "navigation2d":
        if config.sampler == "batched":
            return BatchedNavigationSampler(config.horizon or NAVIGATION_HORIZON)
        env_class: type = Navigation2DEnv
    else:
        from torchmaml.extras import require

        require("mujoco", "mujoco")
        from torchmaml.rl.half_cheetah import HORIZON, HalfCheetahDirEnv, HalfCheetahVelEnv  # gymnasium[mujoco]

        env_class = HalfCheetahDirEnv if config.env == "half-cheetah-dir" else HalfCheetahVelEnv
    share = -(-config.meta_batch_size // processes)  # a process's largest share of a meta-batch
    per_round = min(config.tasks_per_round or share, share)  # a round never larger than the share
    env_kwargs = {"horizon": config.horizon} if config.horizon else {}
    if config.frame_skip:  # half-cheetah only (the config refuses it for navigation)
        env_kwargs["frame_skip"] = config.frame_skip
    if config.sampler == "batched":
        from torchmaml.rl.half_cheetah_batched import BatchedHalfCheetahSampler

        return BatchedHalfCheetahSampler(env_class, tasks_per_round=per_round, **{"horizon": HORIZON, **env_kwargs})
    return VectorEnvSampler(
        env_class,
        config.trajectories,
        tasks_per_round=per_round,
        asynchronous=config.vector == "async",
        env_kwargs=env_kwargs or None,
    )


def build_policy(config: RLConfig, observation_dim: int, action_dim: int) -> GaussianMLPPolicy:
    """The paper's Gaussian MLP policy, initialised from ``config.seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(model_seed(config.seed))
        dtype = getattr(torch, config.policy_dtype)
        return GaussianMLPPolicy(observation_dim, action_dim, config.hidden, config.init_log_std, dtype)


def load_run_config(out_dir: str | Path) -> RLConfig:
    """The configuration saved in a run folder; a clear error if it is not one."""
    run = RunDir(Path(out_dir))
    if not run.config.exists():
        raise ConfigError(f"{out_dir} is not an RL run folder (no config.toml); train one first")
    return build_config(read_toml(run.config))


def extended_config(out_dir: str | Path, overrides: list[str]) -> RLConfig:
    """The run's saved configuration with ``--set`` overrides of ``EXTENSIBLE_KEYS`` only (extending a run)."""
    return build_config(extended(load_run_config(out_dir).model_dump(), overrides, EXTENSIBLE_KEYS))


def train(
    config: RLConfig | None,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    policy: nn.Module | None = None,
    overwrite: bool = False,
    team: Team = SOLO,
) -> Path:
    """Meta-train (then the pretrained baseline, if configured) into ``out_dir``; returns the folder.

    ``policy``: any ``nn.Module`` mapping observations to ``(mean, log_std)`` of a Gaussian (see ``rl.policy``)
    to meta-train instead of the configured MLP; its parameters are the starting point. Pass the same module
    to ``evaluate``. A new run refuses a folder that holds a run unless ``overwrite`` (which deletes it).
    ``resume=True`` continues the run with its saved configuration, or with ``config`` if that raises its
    ``EXTENSIBLE_KEYS`` only (:func:`extended_config`). With a ``team`` of several processes (``torchrun``),
    each meta-batch's rollouts are shared by the ranks and the TRPO step is the one-process step
    (:class:`PolicyPhase`); rank 0 writes the run folder.
    """
    run = RunDir(Path(out_dir))
    if resume and config is None:
        config = load_run_config(run.root)
    phases = [(MAML, config.iterations)]
    if config.pretrained_iterations:
        phases.append((PRETRAINED, config.pretrained_iterations))
    with make_sampler(config, team.size) as sampler:  # the environment and a given policy are checked before any write
        if policy is not None:
            check_policy(policy, sampler.observation_dim, sampler.action_dim)

        def build(kind: str, iterations: int) -> Trainer:
            module = policy if policy is not None else build_policy(config, sampler.observation_dim, sampler.action_dim)
            check_policy(module, sampler.observation_dim, sampler.action_dim)
            return PolicyPhase(config, sampler, FunctionalModel(module), kind, team).trainer(run, iterations, progress)

        train_phases(
            run,
            config,
            phases,
            build,
            species="rl",
            resume=resume,
            overwrite=overwrite,
            saved=lambda: load_run_config(run.root),
            to_toml=to_toml,
            plot=lambda: plot_learning_curve({kind: read_records(run.metrics(kind)) for kind, _ in phases}, run.root),
            team=team,
        )
    return run.root


class PolicyPhase:
    """The state of one phase (``maml`` or ``pretrained``): the policy parameters, the task/noise generator and
    the counters of CPU time and environment steps; :meth:`step` is one MAML-TRPO iteration.

    With a ``team`` of ``R`` processes, rank ``r`` rolls out the tasks ``task_range(T, r, R)`` of each
    meta-batch and the TRPO step reduces its means over every rank's tasks (``rl.maml_trpo``): all ranks hold
    bit-identical parameters and generator states. ``env_steps`` counts every rank's steps; ``cpu_seconds``
    is this process's CPU time (rank 0's in the metrics it writes)."""

    def __init__(
        self, config: RLConfig, sampler: Sampler, policy: FunctionalModel, kind: str, team: Team = SOLO
    ) -> None:
        self.config, self.sampler, self.policy, self.kind, self.team = config, sampler, policy, kind, team
        self.share = task_range(config.meta_batch_size, team.rank, team.size)  # refuses fewer tasks than ranks
        # the reduction over ranks, only under a team (one process calls meta_update as it always did)
        self.reduce = {"process_group": team.group} if team.distributed else {}
        self.lrs = [config.inner_lr] * config.inner_steps if kind == MAML else []
        self.params: Params = policy.parameters()
        self.generator = seeds.generator(task_stream(config.seed, kind))
        self.cpu_seconds = 0.0
        self.env_steps = 0

    def trainer(self, run: RunDir, iterations: int, progress: bool) -> Trainer:
        """The runtime that steps this phase to ``iterations`` in ``run``."""
        guard = DivergenceGuard(
            MAX_CONSECUTIVE_SKIPS,
            lambda: self.params.values(),
            what="a non-finite return, loss or gradient",
            advice="Lower max_kl or inner_lr",
        )
        hooks = [
            guard,
            TensorBoard(run.tensorboard(self.kind)),
            Progress(progress, _postfix),
            TimeLimit(self.config.time_limit_minutes),
        ]
        return Trainer(
            self.step,
            self,
            hooks,
            run=run,
            kind=self.kind,
            iterations=iterations,
            config=self.config,
            checkpoint_every=self.config.checkpoint_every,
            keep_checkpoints=self.config.keep_checkpoints,
            team=self.team,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.params,
            "generator": self.generator.get_state(),
            "cpu_seconds": self.cpu_seconds,
            "env_steps": self.env_steps,
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        params = state["policy"]
        if not isinstance(params, dict) or params.keys() != self.params.keys():
            raise CheckpointError(f"checkpoint {path} does not fit this run's policy; it was written for another one")
        self.params = params
        self.generator.set_state(state["generator"])
        self.cpu_seconds, self.env_steps = state["cpu_seconds"], state["env_steps"]

    def step(self, iteration: int) -> Metrics:
        """Sample tasks, adapt to each, take one TRPO step on the meta-objective; a step whose numbers are not
        all finite keeps the parameters (``skipped``)."""
        config, started = self.config, time.process_time()
        tasks = self.sampler.sample_tasks(config.meta_batch_size, self.generator)
        phases = sample_phases(
            self.sampler, self.policy, self.params, tasks, self.generator, config, self.lrs, self.share
        )
        params, metrics = meta_update(
            self.policy, self.params, phases, config, self.lrs, config.estimator, **self.reduce
        )
        finite = all(math.isfinite(value) for value in metrics.values())
        if finite:
            self.params = params
        self.cpu_seconds += time.process_time() - started
        self.env_steps += self._total(sum(phase.episodes.num_steps() for phase in phases))
        return {
            **metrics,
            "skipped": float(not finite),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "env_steps": self.env_steps,
        }

    def _total(self, count: int) -> int:
        """The sum of ``count`` over the team's ranks."""
        if not self.team.distributed:
            return count
        total = torch.tensor(count, dtype=torch.int64)
        dist.all_reduce(total, group=self.team.group)
        return int(total)


def _postfix(metrics: Metrics) -> dict[str, str]:
    return {"before": f"{metrics['return_before']:.1f}", "after": f"{metrics['return_after']:.1f}"}


__all__ = ["EXTENSIBLE_KEYS", "MAML", "PRETRAINED", "build_policy", "extended_config", "make_sampler", "train"]
