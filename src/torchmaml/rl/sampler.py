"""Samplers: rollouts of a Gaussian policy on a batch of tasks, ``N`` trajectories per task, as ``Episodes``.

Every task ``i`` has its own parameters (``params[name][i]``: the meta-parameters expanded before adaptation,
the adapted ones after), and the policy runs on all tasks at once with ``torch.func.vmap``. The actions are

    a_t = mean_w(s_t) + exp(log_std_w(s_t)) * eps_t,        eps ~ N(0, I) drawn up front from a torch.Generator,

and the environments clip them (the episodes store the unclipped ``a_t``, whose log-probability the policy
gradient needs). A rollout is a deterministic function of the generator's state: the noise ``[T, N, H, A]``
and, for gymnasium environments, one reset seed per trajectory are drawn for the whole batch before any step,
so the result does not depend on how the trajectories are spread over vectorised environments or processes.
``rollout(..., share=range(a, b))`` runs tasks ``a .. b-1`` only, with their parameters (a process's share of
the batch, ``torchmaml.distributed.task_range``): it draws the same ``[T, ...]`` noise and seeds, advancing the
generator as the whole batch does, and returns the episodes of the whole batch's tasks ``a .. b-1``.

- ``BatchedNavigationSampler``: 2D navigation as one tensor operation for all ``T x N`` copies (fast).
- ``VectorEnvSampler``: any task environment with the gymnasium API (half-cheetah), ``tasks_per_round x N``
  copies in a ``gymnasium.vector.SyncVectorEnv`` or, with ``asynchronous=True``, an ``AsyncVectorEnv`` (one
  worker process per copy). Use it as a context manager: the workers are shut down on leaving the block,
  also on an error or ``KeyboardInterrupt`` (then they are terminated instead of asked to close).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch.func import vmap

from torchmaml.functional import FunctionalModel, Params
from torchmaml.rl.episodes import Episodes
from torchmaml.rl.navigation import HORIZON, BatchedNavigation2D, sample_goals
from torchmaml.rl.policy import distribution


class Sampler(Protocol):
    """What the algorithm needs from a sampler."""

    horizon: int
    observation_dim: int
    action_dim: int

    def sample_tasks(self, num: int, generator: torch.Generator) -> torch.Tensor: ...

    def rollout(
        self,
        policy: FunctionalModel,
        params: Params,
        tasks: torch.Tensor,
        trajectories: int,
        generator: torch.Generator,
        share: range | None = None,
    ) -> Episodes:
        """Episodes ``[len(share), N, ...]`` of the tasks ``tasks[share]`` (all ``T`` by default), with
        per-task ``params`` of those tasks; noise (and seeds) are drawn for all ``T`` tasks."""

    def close(self) -> None: ...


def per_task(params: Params, num_tasks: int) -> Params:
    """The same parameters for every task: a view with a leading task axis (no copy)."""
    return {name: p.expand(num_tasks, *p.shape) for name, p in params.items()}


def act(policy: FunctionalModel, params: Params, observations: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Actions ``mean + exp(log_std) * noise`` for observations ``[T, N, obs]`` with per-task ``params``."""
    mean, log_std = vmap(functools.partial(distribution, policy))(params, observations)
    return mean + torch.exp(log_std) * noise


def stack_steps(steps: Sequence[tuple[torch.Tensor, ...]]) -> Episodes:
    """Per-step ``(observation, action, reward, alive)`` tensors ``[tasks, N, ...]`` -> ``Episodes`` with the
    time axis third: ``[tasks, N, H, ...]``."""
    return Episodes(*(torch.stack(parts, dim=2) for parts in zip(*steps, strict=True)))


def draw_noise_and_seeds(
    num_tasks: int, trajectories: int, horizon: int, action_dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The action noise ``[T, N, H, A]`` and one reset seed per trajectory ``[T, N]`` of a batch, in the one order
    every gymnasium-style sampler draws them (the twin equals the gymnasium sampler only because they share it)."""
    noise = torch.randn(num_tasks, trajectories, horizon, action_dim, generator=generator)
    seeds = torch.randint(0, 2**31 - 1, (num_tasks, trajectories), generator=generator)
    return noise, seeds


def in_rounds(
    round_: Callable[..., Episodes],
    params: Params,
    tasks: torch.Tensor,
    noise: torch.Tensor,
    seeds: torch.Tensor,
    share: range,
    per_round: int,
) -> Episodes:
    """The episodes of the tasks ``share``, ``per_round`` tasks at a time: ``round_(params, tasks, noise,
    seeds)`` on each round's slices (the last round padded with copies of the share's last task, dropped)."""
    rounds = []
    for start in range(share.start, share.stop, per_round):
        chosen = torch.arange(start, start + per_round).clamp(max=share.stop - 1)  # pad the last round
        round_params = {name: p[chosen - share.start] for name, p in params.items()}
        rounds.append(round_(round_params, tasks[chosen], noise[chosen], seeds[chosen]))
    return Episodes(*(torch.cat(parts)[: len(share)] for parts in zip(*rounds, strict=True)))


class _ClosingContext:
    def close(self) -> None:
        """Release the environments' resources (nothing for tensor environments)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class BatchedNavigationSampler(_ClosingContext):
    """Rollouts on ``BatchedNavigation2D``: ``T x N`` trajectories advance together, one tensor op per step."""

    observation_dim = BatchedNavigation2D.observation_dim
    action_dim = BatchedNavigation2D.action_dim

    def __init__(self, horizon: int = HORIZON) -> None:
        self.horizon = horizon

    def sample_tasks(self, num: int, generator: torch.Generator) -> torch.Tensor:
        return sample_goals(num, generator)

    @torch.no_grad()
    def rollout(
        self,
        policy: FunctionalModel,
        params: Params,
        tasks: torch.Tensor,
        trajectories: int,
        generator: torch.Generator,
        share: range | None = None,
    ) -> Episodes:
        noise = torch.randn(tasks.shape[0], trajectories, self.horizon, self.action_dim, generator=generator)
        if share is not None:
            tasks, noise = tasks[share.start : share.stop], noise[share.start : share.stop]
        env = BatchedNavigation2D(tasks, trajectories, self.horizon)
        observation = env.reset()
        alive = torch.ones(tasks.shape[0], trajectories)
        steps: list[tuple[torch.Tensor, ...]] = []
        for t in range(self.horizon):
            action = act(policy, params, observation, noise[:, :, t])
            next_observation, reward, terminated = env.step(action)
            steps.append((observation, action, reward, alive))
            alive = alive * (~terminated).float()
            observation = next_observation
        return stack_steps(steps)


class VectorEnvSampler(_ClosingContext):
    """Rollouts on gymnasium task environments, ``tasks_per_round`` tasks (times ``N`` copies) at a time.

    ``env_class(**env_kwargs)`` builds one environment; the class has a static ``sample_tasks(num, generator)``
    and its instances a ``task`` and a ``horizon`` attribute (``HalfCheetahDirEnv``, ``Navigation2DEnv``, ...).
    Asynchronous workers are started with ``context`` (``"spawn"``: safe with torch's threads in the parent).
    """

    def __init__(
        self,
        env_class: type[gym.Env],
        trajectories: int,
        tasks_per_round: int = 1,
        asynchronous: bool = False,
        env_kwargs: Mapping[str, Any] | None = None,
        context: str = "spawn",
    ) -> None:
        self.env_class = env_class
        self.trajectories = trajectories
        self.tasks_per_round = tasks_per_round
        make_env = functools.partial(env_class, **(env_kwargs or {}))
        width = tasks_per_round * trajectories
        if asynchronous:
            self.envs: gym.vector.VectorEnv = gym.vector.AsyncVectorEnv([make_env] * width, context=context)
        else:
            self.envs = gym.vector.SyncVectorEnv([make_env] * width)
        self._closed = False
        self.horizon = int(self.envs.get_attr("horizon")[0])
        self.observation_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.action_dim = int(np.prod(self.envs.single_action_space.shape))

    def sample_tasks(self, num: int, generator: torch.Generator) -> torch.Tensor:
        return self.env_class.sample_tasks(num, generator)  # type: ignore[attr-defined]

    @torch.no_grad()
    def rollout(
        self,
        policy: FunctionalModel,
        params: Params,
        tasks: torch.Tensor,
        trajectories: int,
        generator: torch.Generator,
        share: range | None = None,
    ) -> Episodes:
        if trajectories != self.trajectories:
            raise ValueError(f"this sampler runs {self.trajectories} trajectories per task, not {trajectories}")
        num_tasks = tasks.shape[0]
        noise, seeds = draw_noise_and_seeds(num_tasks, trajectories, self.horizon, self.action_dim, generator)
        share = range(num_tasks) if share is None else share
        return in_rounds(
            functools.partial(self._round, policy), params, tasks, noise, seeds, share, self.tasks_per_round
        )

    def _round(
        self, policy: FunctionalModel, params: Params, tasks: torch.Tensor, noise: torch.Tensor, seeds: torch.Tensor
    ) -> Episodes:
        per_round, trajectories = tasks.shape[0], self.trajectories
        task_values = [tasks[i].numpy() for i in range(per_round) for _ in range(trajectories)]
        self.envs.set_attr("task", task_values)
        observation, _ = self.envs.reset(seed=[int(s) for s in seeds.flatten()])
        alive = np.ones(per_round * trajectories, dtype=bool)
        steps: list[tuple[torch.Tensor, ...]] = []
        for t in range(self.horizon):
            obs = torch.as_tensor(observation, dtype=torch.float32).reshape(per_round, trajectories, -1)
            action = act(policy, params, obs, noise[:, :, t])
            observation, reward, terminated, truncated, _ = self.envs.step(action.reshape(-1, self.action_dim).numpy())
            reward = torch.as_tensor(reward, dtype=torch.float32).reshape(per_round, trajectories)
            mask = torch.as_tensor(alive, dtype=torch.float32).reshape(per_round, trajectories)
            steps.append((obs, action, reward, mask))
            alive &= ~(terminated | truncated)
        return stack_steps(steps)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.envs.close()

    def __exit__(self, exc_type, *exc_info: Any) -> None:
        if exc_type is None or self._closed:
            self.close()
            return
        self._closed = True
        if isinstance(self.envs, gym.vector.AsyncVectorEnv):
            self.envs.close(terminate=True)  # workers may be mid-call: do not wait for them
        else:
            self.envs.close()
