"""A batched twin of the half-cheetah task environments: every copy of a meta-batch stepped together.

``BatchedHalfCheetah`` simulates ``n`` copies of gymnasium's HalfCheetah-v5 (the same ``MjModel``, frame skip
``k = 5`` by default, ``dt = k * timestep = 0.05``; ``frame_skip=1`` as the authors' rllab environments) as one
``mujoco.batch.Batch`` on one thread (MuJoCo >= 4; a loop over one ``MjData`` per copy otherwise, with the same
results), and computes observations and rewards for all
copies at once in numpy, with the arithmetic of ``rl.half_cheetah`` element by element:

    reset(seed s):   qpos_0 = qpos0 + U(-0.1, 0.1)^9,   qvel_0 = 0.1 * N(0, 1)^9   (gymnasium's np_random(s))
    step(a):         u = clip(a, -1, 1),   x_t -> x_{t+1} after k mj_steps with ctrl = u,
                     v = (x_{t+1} - x_t) / dt,          s_{t+1} = (qpos[1:], qvel)
    direction d:     r_t = d * v - 0.05 ||u||^2
    goal velocity:   r_t = -|v - v*| - 0.05 ||u||^2

(``||u||^2`` in the action's precision, as gymnasium's ``control_cost``). With the same reset seeds and the
same actions the twin gives the episodes of ``VectorEnvSampler(HalfCheetahDirEnv or HalfCheetahVelEnv)``
bit for bit (``tests/test_half_cheetah_batched.py``): ``mujoco.batch`` is bit-identical to a loop over one
``MjData`` per simulation, and gymnasium's extra ``mj_rnePostConstraint`` after each step only computes
derived force fields that the next step recomputes.

``BatchedHalfCheetahSampler`` is the sampler (``rl.sampler.Sampler``) on the twin: the noise ``[T, N, H, A]``
and one reset seed per trajectory are drawn from the generator as ``VectorEnvSampler`` draws them, the tasks
run in the gymnasium sampler's rounds (by default a whole share of the batch as one round), and the policy
is evaluated once per time step for every copy of a round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.utils.seeding import np_random

from torchmaml.functional import FunctionalModel, Params
from torchmaml.rl.episodes import Episodes
from torchmaml.rl.half_cheetah import CONTROL_COST, FRAME_SKIP, HORIZON, HalfCheetahDirEnv, HalfCheetahVelEnv
from torchmaml.rl.sampler import _ClosingContext, act, draw_noise_and_seeds, in_rounds

RESET_NOISE = 0.1  # HalfCheetah-v5's reset_noise_scale
ForwardReward = Callable[[np.ndarray, np.ndarray], np.ndarray]


def direction_reward(velocity: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``d * v`` (``HalfCheetahDirEnv``)."""
    return target * velocity


def velocity_reward(velocity: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``-|v - v*|`` (``HalfCheetahVelEnv``)."""
    return -np.abs(velocity - target)


FORWARD_REWARDS: dict[type, ForwardReward] = {HalfCheetahDirEnv: direction_reward, HalfCheetahVelEnv: velocity_reward}


def control_costs(actions: np.ndarray) -> np.ndarray:
    """``0.05 ||u||^2`` per row of the clipped actions ``[n, A]``, in their precision (float32 actions give
    gymnasium's float32 ``control_cost``), as float64."""
    return (CONTROL_COST * np.square(actions).sum(axis=-1)).astype(np.float64)


def reset_states(seeds: np.ndarray, qpos0: np.ndarray, qvel0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Initial ``(qpos [n, nq], qvel [n, nv])`` of ``reset(seed=s)`` for every seed: from ``np_random(s)``,
    ``qpos0 + U(-0.1, 0.1)`` then ``qvel0 + 0.1 * N(0, 1)``, drawn in that order (HalfCheetah-v5's
    ``reset_model``)."""
    qpos = np.empty((len(seeds), qpos0.size))
    qvel = np.empty((len(seeds), qvel0.size))
    for i, seed in enumerate(seeds):
        rng = np_random(int(seed))[0]
        qpos[i] = qpos0 + rng.uniform(low=-RESET_NOISE, high=RESET_NOISE, size=qpos0.size)
        qvel[i] = qvel0 + RESET_NOISE * rng.standard_normal(qvel0.size)
    return qpos, qvel


class _MjDataLoop:
    """``n`` simulations as one ``MjData`` each, stepped in a Python loop (MuJoCo without ``mujoco.batch``);
    the interface of the part of ``mujoco.batch.Batch`` the twin uses."""

    def __init__(self, model: mujoco.MjModel, nsim: int) -> None:
        self.model = model
        self.datas = [mujoco.MjData(model) for _ in range(nsim)]
        self.qpos = np.zeros((nsim, model.nq))
        self.qvel = np.zeros((nsim, model.nv))
        self.ctrl = np.zeros((nsim, model.nu))

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """``mj_resetData``, the state ``qpos``/``qvel`` written, then ``mj_forward`` (gymnasium's reset)."""
        for data, position, velocity in zip(self.datas, qpos, qvel, strict=True):
            mujoco.mj_resetData(self.model, data)
            data.qpos[:], data.qvel[:] = position, velocity
            mujoco.mj_forward(self.model, data)
        self.qpos[:], self.qvel[:] = qpos, qvel

    def step(self, nstep: int) -> None:
        for i, data in enumerate(self.datas):
            data.ctrl[:] = self.ctrl[i]
            mujoco.mj_step(self.model, data, nstep=nstep)
            self.qpos[i], self.qvel[i] = data.qpos, data.qvel


class _Batch:
    """``n`` simulations as a ``mujoco.batch.Batch`` on one thread: the loop over them runs in C."""

    def __init__(self, model: mujoco.MjModel, nsim: int) -> None:
        from mujoco.batch import Batch

        self.batch = Batch(model, nsim=nsim, nthread=1)
        self.qpos, self.qvel, self.ctrl = (self.batch.bind(name) for name in ("qpos", "qvel", "ctrl"))

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """``mj_resetData``, the state ``qpos``/``qvel`` written, then ``mj_forward`` (gymnasium's reset)."""
        self.batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        self.qpos[:], self.qvel[:] = qpos, qvel
        self.batch.forward()

    def step(self, nstep: int) -> None:
        self.batch.step(nstep=nstep)


def has_batch() -> bool:
    """Whether this MuJoCo has ``mujoco.batch`` (MuJoCo >= 4)."""
    try:
        import mujoco.batch  # noqa: F401
    except ImportError:
        return False
    return True


class BatchedHalfCheetah:
    """``n = tasks x N`` copies of a half-cheetah task environment (``env_class``: ``HalfCheetahDirEnv`` or
    ``HalfCheetahVelEnv``) stepped together; tensors are ``[tasks, N, ...]``, observations float32."""

    def __init__(
        self, env_class: type, tasks: int, trajectories: int, loop: bool = False, frame_skip: int = FRAME_SKIP
    ) -> None:
        env = HalfCheetahEnv(frame_skip=frame_skip)  # the MjModel, initial state and dt gymnasium uses
        self.model, self.frame_skip, self.dt = env.model, env.frame_skip, env.dt
        self.qpos0, self.qvel0 = env.init_qpos, env.init_qvel
        env.close()
        self.forward_reward = FORWARD_REWARDS[env_class]
        self.shape = (tasks, trajectories)
        nsim = tasks * trajectories
        self.sims = _MjDataLoop(self.model, nsim) if loop or not has_batch() else _Batch(self.model, nsim)
        self.observation_dim = self.model.nq - 1 + self.model.nv
        self.action_dim = self.model.nu
        self.target = np.zeros(nsim)

    def observation(self) -> torch.Tensor:
        """``(qpos[1:], qvel)`` of every copy (gymnasium's observation without ``rootx``), float32."""
        observation = np.concatenate((self.sims.qpos[:, 1:], self.sims.qvel), axis=1)
        return torch.from_numpy(observation).to(torch.float32).reshape(*self.shape, -1)

    def reset(self, tasks: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Task ``tasks[i]`` (``[tasks, 1]``) for the ``N`` copies of row ``i``, each reset as gymnasium's
        ``reset(seed=seeds[i, j])``; returns the first observations ``[tasks, N, obs]``."""
        target = tasks.reshape(-1, 1).numpy().astype(np.float64)  # the env's float(task)
        self.target = np.repeat(target[:, 0], self.shape[1])
        self.sims.reset(*reset_states(seeds.reshape(-1).numpy(), self.qpos0, self.qvel0))
        return self.observation()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One environment step (``frame_skip`` MuJoCo steps) of every copy with ``actions [tasks, N, A]``;
        returns the next observations and the float32 rewards ``[tasks, N]`` (nothing terminates)."""
        clipped = np.clip(actions.reshape(-1, self.action_dim).numpy(), -1.0, 1.0)
        self.sims.ctrl[:] = clipped
        x_before = self.sims.qpos[:, 0].copy()
        self.sims.step(self.frame_skip)
        velocity = (self.sims.qpos[:, 0] - x_before) / self.dt
        reward = self.forward_reward(velocity, self.target) - control_costs(clipped)
        return self.observation(), torch.from_numpy(reward).to(torch.float32).reshape(self.shape)


class BatchedHalfCheetahSampler(_ClosingContext):
    """Rollouts on ``BatchedHalfCheetah``, ``tasks_per_round`` tasks (times ``N`` copies) per round (unset: a
    whole share of the meta-batch at once), equal to ``VectorEnvSampler(env_class, N, tasks_per_round)`` given
    the same generator state.

    Rounds of the same tasks give the same episodes bit for bit; other rounds give them up to float rounding
    (the policy's batched arithmetic may round differently at another batch size), which the cheetah's
    dynamics then amplify. ``loop=True`` steps one ``MjData`` per copy from Python (the fallback without
    ``mujoco.batch``); ``frame_skip`` is the environments' (``VectorEnvSampler(..., env_kwargs={"frame_skip":
    k})``)."""

    def __init__(
        self,
        env_class: type,
        horizon: int = HORIZON,
        tasks_per_round: int | None = None,
        loop: bool = False,
        frame_skip: int = FRAME_SKIP,
    ) -> None:
        self.env_class, self.horizon, self.tasks_per_round, self.loop = env_class, horizon, tasks_per_round, loop
        self.frame_skip = frame_skip
        self._envs: dict[tuple[int, int], BatchedHalfCheetah] = {}  # by (tasks, N): one per round shape
        probe = self._env(1, 1)
        self.observation_dim, self.action_dim = probe.observation_dim, probe.action_dim

    def sample_tasks(self, num: int, generator: torch.Generator) -> torch.Tensor:
        return self.env_class.sample_tasks(num, generator)  # type: ignore[attr-defined]

    def _env(self, tasks: int, trajectories: int) -> BatchedHalfCheetah:
        key = (tasks, trajectories)
        if key not in self._envs:
            self._envs[key] = BatchedHalfCheetah(self.env_class, tasks, trajectories, self.loop, self.frame_skip)
        return self._envs[key]

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
        noise, seeds = draw_noise_and_seeds(tasks.shape[0], trajectories, self.horizon, self.action_dim, generator)
        share = range(tasks.shape[0]) if share is None else share
        per_round = self.tasks_per_round or len(share)
        return in_rounds(functools.partial(self._round, policy), params, tasks, noise, seeds, share, per_round)

    def _round(
        self, policy: FunctionalModel, params: Params, tasks: torch.Tensor, noise: torch.Tensor, seeds: torch.Tensor
    ) -> Episodes:
        """One round: ``tasks x N`` copies reset with ``seeds`` and stepped ``horizon`` times, the policy
        evaluated once per step for all of them."""
        env = self._env(*seeds.shape)
        observation = env.reset(tasks, seeds)
        observations = torch.empty(*seeds.shape, self.horizon, env.observation_dim)
        rewards = torch.empty(*seeds.shape, self.horizon)
        actions = []
        for t in range(self.horizon):
            action = act(policy, params, observation, noise[:, :, t])
            observations[:, :, t] = observation
            observation, rewards[:, :, t] = env.step(action)
            actions.append(action)
        return Episodes(observations, torch.stack(actions, dim=2), rewards, torch.ones_like(rewards))


__all__ = [
    "BatchedHalfCheetah",
    "BatchedHalfCheetahSampler",
    "control_costs",
    "direction_reward",
    "has_batch",
    "reset_states",
    "velocity_reward",
]
