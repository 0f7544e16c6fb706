"""Meta-training: sample tasks -> adapt -> TRPO -> log -> checkpoint, resumable; ``train`` is the entry point.

    config = torchmaml.rl.load_config("navigation2d", ["iterations=200"])
    torchmaml.rl.train(config, "runs/nav")      # then torchmaml.rl.evaluate("runs/nav")

A run folder holds ``config.toml`` (the resolved configuration), one JSONL line of metrics per iteration
(``metrics-maml.jsonl``: returns before/after adaptation, TRPO's KL and improvement, cumulative training
wall-clock and CPU seconds, environment steps), periodic checkpoints ``checkpoints/<phase>-<iteration>.pt``
and the final ``checkpoint-<phase>.pt`` (``torchmaml.checkpoint``: atomic, checksummed, plain tensors and
numbers: the policy parameters, the task/noise generator's state and every global RNG state), and
``learning_curve.png``.
Phases: ``maml`` and, if ``pretrained_iterations > 0``, ``pretrained`` (TRPO without adaptation on random
tasks: the paper's "pretrained" baseline). ``train(..., resume=True)`` continues every unfinished phase from
its newest valid checkpoint with the folder's own configuration; everything a run draws comes from one
``torch.Generator`` per phase, so a resumed run repeats the uninterrupted one. On an error or
``KeyboardInterrupt`` the sampler's worker processes (if any) are shut down before the exception propagates;
the last periodic checkpoint is kept. The run-folder runtime is the supervised trainer's (``torchmaml.run``):
no symbolic link followed, a torn metrics line dropped on resume, SIGINT/SIGTERM finish the iteration and
write a stop checkpoint (``Interrupted``), a checkpoint of another configuration refused, an existing run
replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from torchmaml.checkpoint import CheckpointStore, check_config_digest, config_digest, save_checkpoint
from torchmaml.config import read_toml, to_toml
from torchmaml.errors import ConfigError
from torchmaml.functional import FunctionalModel, Params
from torchmaml.rl.config import RLConfig, build_config
from torchmaml.rl.maml_trpo import meta_update, sample_phases
from torchmaml.rl.navigation import HORIZON as NAVIGATION_HORIZON
from torchmaml.rl.plots import plot_learning_curve
from torchmaml.rl.policy import GaussianMLPPolicy, check_policy
from torchmaml.rl.sampler import BatchedNavigationSampler, Sampler, VectorEnvSampler
from torchmaml.rng import capture_rng, restore_rng
from torchmaml.run import seeds
from torchmaml.run.files import write_atomic
from torchmaml.run.folder import check_new_run_folder, replace_run
from torchmaml.run.metrics_log import open_metrics, read_records, truncate_metrics
from torchmaml.run.resume import extended, newest_state, phase_finished, remove_stale_temporaries
from torchmaml.run.seeds import model_seed, task_stream
from torchmaml.run.signals import Interrupted, StopFlag, stop_requests
from torchmaml.runlock import exclusive_run

MAML, PRETRAINED = "maml", "pretrained"
EXTENSIBLE_KEYS = ("iterations", "pretrained_iterations")


def make_sampler(config: RLConfig) -> Sampler:
    """The sampler of ``config.env``: batched tensors for navigation, ``gymnasium.vector`` for half-cheetah."""
    if config.env == "navigation2d":
        return BatchedNavigationSampler(config.horizon or NAVIGATION_HORIZON)
    from torchmaml.extras import require

    require("mujoco", "mujoco")
    from torchmaml.rl.half_cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv  # needs gymnasium[mujoco]

    env_class = HalfCheetahDirEnv if config.env == "half-cheetah-dir" else HalfCheetahVelEnv
    return VectorEnvSampler(
        env_class,
        config.trajectories,
        tasks_per_round=config.tasks_per_round or config.meta_batch_size,
        asynchronous=config.vector == "async",
        env_kwargs={"horizon": config.horizon} if config.horizon else None,
    )


def build_policy(config: RLConfig, observation_dim: int, action_dim: int) -> GaussianMLPPolicy:
    """The paper's Gaussian MLP policy, initialised from ``config.seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(model_seed(config.seed))
        return GaussianMLPPolicy(observation_dim, action_dim, config.hidden, config.init_log_std)


def load_run_config(out_dir: str | Path) -> RLConfig:
    """The configuration saved in a run folder; a clear error if it is not one."""
    path = Path(out_dir) / "config.toml"
    if not path.exists():
        raise ConfigError(f"{out_dir} is not an RL run folder (no config.toml); train one first")
    return build_config(read_toml(path))


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
) -> Path:
    """Meta-train (then the pretrained baseline, if configured) into ``out_dir``; returns the folder.

    ``policy``: any ``nn.Module`` mapping observations to ``(mean, log_std)`` of a Gaussian (see ``rl.policy``)
    to meta-train instead of the configured MLP; its parameters are the starting point. Pass the same module
    to ``evaluate``. A new run refuses a folder that holds a run unless ``overwrite`` (which deletes it).
    ``resume=True`` continues the run with its saved configuration, or with ``config`` if that raises its
    ``EXTENSIBLE_KEYS`` only (:func:`extended_config`).
    """
    out = Path(out_dir)
    if resume:
        saved = load_run_config(out)
        config = saved if config is None else config
        if config_digest(config.model_dump()) != config_digest(saved.model_dump()):
            raise ConfigError(
                f"--resume continues {out} with its own config; only {' and '.join(EXTENSIBLE_KEYS)} can be raised"
            )
    with make_sampler(config) as sampler:  # the environment and a given policy are checked before any write
        if policy is not None:
            check_policy(policy, sampler.observation_dim, sampler.action_dim)
        if not resume and check_new_run_folder(out, overwrite):
            replace_run(out)
        with exclusive_run(out), stop_requests() as stop:
            if resume:
                remove_stale_temporaries(out, report=_warn)
                if config != saved:
                    write_atomic(out / "config.toml", to_toml(config).encode())
            else:
                write_atomic(out / "config.toml", to_toml(config).encode())
            _train_phases(config, sampler, out, progress, resume, policy, stop)
    return out


def _train_phases(
    config: RLConfig,
    sampler: Sampler,
    out: Path,
    progress: bool,
    resume: bool,
    policy: nn.Module | None,
    stop: StopFlag,
) -> None:
    digest = config_digest(config.model_dump())
    phases = [(MAML, config.iterations, [config.inner_lr] * config.inner_steps)]
    if config.pretrained_iterations:
        phases.append((PRETRAINED, config.pretrained_iterations, []))
    for kind, iterations, lrs in phases:
        if resume and phase_finished(out / f"checkpoint-{kind}.pt", iterations, digest, warn=_warn):
            continue
        module = policy if policy is not None else build_policy(config, sampler.observation_dim, sampler.action_dim)
        check_policy(module, sampler.observation_dim, sampler.action_dim)
        phase = (kind, iterations, lrs)
        _train_phase(config, sampler, FunctionalModel(module), phase, out, progress, resume, stop)
    plot_learning_curve({kind: read_records(out / f"metrics-{kind}.jsonl") for kind, *_ in phases}, out)


def _train_phase(
    config: RLConfig,
    sampler: Sampler,
    policy: FunctionalModel,
    phase: tuple[str, int, list[float]],
    out: Path,
    progress: bool,
    resume: bool,
    stop: StopFlag,
) -> None:
    kind, iterations, lrs = phase
    digest = config_digest(config.model_dump())
    params: Params = policy.parameters()
    generator = seeds.generator(task_stream(config.seed, kind))
    store = CheckpointStore(out / "checkpoints", kind, config.keep_checkpoints)
    iteration, seconds, cpu_seconds, env_steps = 0, 0.0, 0.0, 0
    if resume and (found := newest_state(store, out / f"checkpoint-{kind}.pt", warn=_warn)) is not None:
        payload = found[1]
        check_config_digest(payload, digest, found[0])
        iteration, seconds, env_steps = payload["iteration"], payload["seconds"], payload["env_steps"]
        cpu_seconds = payload["cpu_seconds"]
        params = payload["policy"]
        generator.set_state(payload["generator"])
        restore_rng(payload["rng"])
        print(f"resumed {kind} at iteration {iteration} from {found[0]}", file=sys.stderr)

    def payload() -> dict:
        return {
            "kind": kind,
            "iteration": iteration,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "env_steps": env_steps,
            "policy": params,
            "generator": generator.get_state(),
            "rng": capture_rng(),
            "config": config.model_dump(),
            "config_digest": digest,
            "target": iterations,
        }

    metrics_path = out / f"metrics-{kind}.jsonl"
    truncate_metrics(metrics_path, iteration)
    bar = tqdm(total=iterations, initial=iteration, desc=f"train {kind}", disable=not progress, dynamic_ncols=True)
    with open_metrics(metrics_path) as log, bar:
        while iteration < iterations:
            started, cpu_started = time.perf_counter(), time.process_time()
            tasks = sampler.sample_tasks(config.meta_batch_size, generator)
            phases = sample_phases(sampler, policy, params, tasks, generator, config, lrs)
            params, metrics = meta_update(policy, params, phases, config, lrs, config.estimator)
            iteration += 1
            seconds += time.perf_counter() - started
            cpu_seconds += time.process_time() - cpu_started
            env_steps += sum(phase.episodes.num_steps() for phase in phases)
            record = {
                "iteration": iteration,
                **metrics,
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu_seconds, 3),
                "env_steps": env_steps,
            }
            log.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(before=f"{metrics['return_before']:.1f}", after=f"{metrics['return_after']:.1f}")
            if iteration % config.checkpoint_every == 0 or stop.signal_number is not None:
                log.flush()
                saved = store.save(iteration, payload())
                if stop.signal_number is not None:
                    raise Interrupted(stop.signal_number, saved)
            if config.time_limit_minutes is not None and seconds >= 60 * config.time_limit_minutes:
                print(f"{kind}: time limit of {config.time_limit_minutes} minutes reached at iteration {iteration}")
                break
    save_checkpoint(out / f"checkpoint-{kind}.pt", payload())


def _warn(message: str) -> None:
    print(f"torchmaml: warning: {message}", file=sys.stderr)
