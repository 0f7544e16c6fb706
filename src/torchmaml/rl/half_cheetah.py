"""Half-cheetah direction and goal-velocity tasks (Finn et al. 2017, §5.3) on gymnasium's MuJoCo HalfCheetah-v5.

With ``v`` the forward velocity of the torso (gymnasium's ``x_velocity``) and ``a`` the action clipped to
``[-1, 1]^6``, the rewards are those of the authors' rllab environments:

    direction  d in {-1, +1} (each with probability 1/2):   r_t = d * v_t               - 0.05 ||a_t||^2
    goal velocity  v* ~ U[0, 2]:                           r_t = -|v_t - v*|           - 0.05 ||a_t||^2

Episodes are truncated after the horizon (200 steps); the cheetah cannot fall, so nothing terminates.

One step is ``frame_skip`` MuJoCo steps of 0.01 s: gymnasium's 5 by default (``dt = 0.05``, 200 steps are
10 s). The authors' rllab environments step MuJoCo once per action (``frame_skip = 1``, ``dt = 0.01``: 200
steps are 2 s), which ``frame_skip=1`` reproduces.
The task is fixed by ``task=``, ``reset(options={"task": ...})`` or ``env.task = ...`` (what
``gymnasium.vector``'s ``set_attr`` does); without one each ``reset`` draws a task from the seeded generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

HORIZON = 200
FRAME_SKIP = 5  # gymnasium's HalfCheetah-v5: dt = 0.05 s per step; the authors' rllab environments step once (1)
CONTROL_COST = 0.05
MAX_VELOCITY = 2.0


class _HalfCheetahTask(HalfCheetahEnv):
    """HalfCheetah-v5 with a task-dependent forward reward, action clipping and an internal horizon."""

    def __init__(
        self, task: np.ndarray | float | None = None, horizon: int = HORIZON, frame_skip: int = FRAME_SKIP
    ) -> None:
        super().__init__(frame_skip=frame_skip, ctrl_cost_weight=CONTROL_COST)
        self.horizon = horizon
        self.task = task
        self._target = 0.0
        self._steps = 0

    @staticmethod
    def sample_tasks(num: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _draw_task(self) -> float:
        raise NotImplementedError

    def _forward_reward(self, velocity: float) -> float:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and "task" in options:
            self.task = options["task"]
        observation, info = super().reset(seed=seed)
        self._target = self._draw_task() if self.task is None else float(np.asarray(self.task).reshape(-1)[0])
        self._steps = 0
        return observation, {**info, "task": np.array([self._target])}

    def step(self, action: np.ndarray):
        observation, _, terminated, _, info = super().step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        truncated = self._steps >= self.horizon
        return observation, float(info["reward_forward"] + info["reward_ctrl"]), terminated, truncated, info

    def _get_rew(self, x_velocity: float, action: np.ndarray):
        forward = self._forward_reward(x_velocity)
        control = -float(self.control_cost(action))
        return forward + control, {"reward_forward": forward, "reward_ctrl": control}


class HalfCheetahDirEnv(_HalfCheetahTask):
    """Run forward (task ``+1``) or backward (task ``-1``): reward ``d * v - 0.05 ||a||^2``."""

    @staticmethod
    def sample_tasks(num: int, generator: torch.Generator) -> torch.Tensor:
        """``[num, 1]`` directions, ``+1`` or ``-1`` with probability 1/2."""
        return 2.0 * torch.randint(0, 2, (num, 1), generator=generator).float() - 1.0

    def _draw_task(self) -> float:
        return float(self.np_random.choice([-1.0, 1.0]))

    def _forward_reward(self, velocity: float) -> float:
        return float(self._target * velocity)


class HalfCheetahVelEnv(_HalfCheetahTask):
    """Run at the goal velocity ``v*`` (the task): reward ``-|v - v*| - 0.05 ||a||^2``."""

    @staticmethod
    def sample_tasks(num: int, generator: torch.Generator) -> torch.Tensor:
        """``[num, 1]`` goal velocities from ``U[0, 2]``."""
        return MAX_VELOCITY * torch.rand(num, 1, generator=generator)

    def _draw_task(self) -> float:
        return float(self.np_random.uniform(0.0, MAX_VELOCITY))

    def _forward_reward(self, velocity: float) -> float:
        return -abs(float(velocity) - self._target)
