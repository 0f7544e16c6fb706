"""2D navigation (Finn et al. 2017, §5.3; the authors' rllab ``PointEnvRandGoal``), twice.

A point mass starts at the origin ``s_0 = (0, 0)``; a task is a goal ``g ~ U[-0.5, 0.5]^2``. Actions are
normalised to ``[-1, 1]``: an action moves the point by ``0.1 clip(a, -1, 1)`` (at most 0.1 per coordinate),
and the reward is minus the distance to the goal after the move,

    s_{t+1} = s_t + 0.1 clip(a_t, -1, 1),        r_t = -||s_{t+1} - g||_2.

The normalisation is rllab's ``normalize`` wrapper, which the authors' code puts around ``PointEnvRandGoal``
(its raw action space is ``[-0.1, 0.1]^2``). It matters for learning: the policy's initial standard deviation
of 1 is then the width of the action range, not ten times it (with raw actions almost every move would be
clipped to a corner, and the mean of the policy would barely change what happens).

The episode terminates when both coordinates are within 0.01 of the goal and is truncated after the
horizon (100 steps). The observation is the position (float32).

``Navigation2DEnv`` is the gymnasium environment (one task, one trajectory). ``BatchedNavigation2D`` steps
``[tasks, trajectories]`` copies as one tensor operation with the same float32 arithmetic, so the two give
the same observations, rewards and terminations step by step (``tests/test_rl_envs.py``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_MOVE = 0.1  # the largest move per coordinate: a normalised action of 1
SUCCESS_DISTANCE = 0.01
HORIZON = 100


def sample_goals(num: int, generator: torch.Generator) -> torch.Tensor:
    """``num`` goals drawn from ``U[-0.5, 0.5]^2``: a float32 ``[num, 2]`` tensor."""
    return GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * torch.rand(num, 2, generator=generator)


def move_of(action: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The displacement ``0.1 clip(a, -1, 1)`` of a normalised action (a float32 numpy array or tensor)."""
    if isinstance(action, torch.Tensor):
        return MAX_MOVE * action.clamp(-1.0, 1.0)
    return (np.float32(MAX_MOVE) * np.clip(action, -1.0, 1.0)).astype(np.float32)


class Navigation2DEnv(gym.Env[np.ndarray, np.ndarray]):
    """The 2D navigation task as a gymnasium environment.

    The task (the goal) is fixed by ``task=`` or ``reset(options={"task": goal})`` or by assigning ``env.task``
    (what ``gymnasium.vector``'s ``set_attr("task", goals)`` does). Without a fixed task each ``reset`` draws a
    goal from the environment's seeded generator, so the environment is deterministic given ``reset(seed=...)``.
    ``info["task"]`` holds the goal.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium's own convention

    def __init__(self, task: np.ndarray | None = None, horizon: int = HORIZON) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.horizon = horizon
        self.task = task
        self._position = np.zeros(2, dtype=np.float32)
        self._goal = np.zeros(2, dtype=np.float32)
        self._steps = 0

    @staticmethod
    def sample_tasks(num: int, generator: torch.Generator) -> torch.Tensor:
        return sample_goals(num, generator)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        if self.task is None:
            self._goal = self.np_random.uniform(GOAL_LOW, GOAL_HIGH, size=2).astype(np.float32)
        else:
            self._goal = np.asarray(self.task, dtype=np.float32).reshape(2)
        self._position = np.zeros(2, dtype=np.float32)
        self._steps = 0
        return self._position.copy(), {"task": self._goal.copy()}

    def step(self, action: np.ndarray):
        self._position = (self._position + move_of(np.asarray(action, dtype=np.float32))).astype(np.float32)
        offset = self._position - self._goal
        distance = np.sqrt(offset[0] * offset[0] + offset[1] * offset[1])
        terminated = bool(np.all(np.abs(offset) < SUCCESS_DISTANCE))
        self._steps += 1
        truncated = self._steps >= self.horizon and not terminated
        return self._position.copy(), -float(distance), terminated, truncated, {"task": self._goal.copy()}


class BatchedNavigation2D:
    """``[T, N]`` copies of 2D navigation (``T`` goals, ``N`` trajectories each) stepped as tensor operations.

    It keeps no episode bookkeeping: after a copy terminates it keeps moving, and the sampler masks its
    later steps out (``Episodes.mask``).
    """

    observation_dim = 2
    action_dim = 2

    def __init__(self, goals: torch.Tensor, trajectories: int, horizon: int = HORIZON) -> None:
        self.goals = goals.to(torch.float32)[:, None, :].expand(-1, trajectories, -1)
        self.horizon = horizon
        self.position = torch.zeros_like(self.goals)

    def reset(self) -> torch.Tensor:
        """Every copy at the origin; returns the observations ``[T, N, 2]``."""
        self.position = torch.zeros_like(self.goals)
        return self.position.clone()

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(observation [T, N, 2], reward [T, N], terminated [T, N] bool)``."""
        self.position = self.position + move_of(action.to(torch.float32))
        offset = self.position - self.goals
        x, y = offset.unbind(-1)
        # the root in float64, rounded once to float32: correctly rounded, like numpy's (torch's vectorised
        # float32 sqrt is not on every CPU), so the two environments agree bit for bit
        distance = torch.sqrt((x * x + y * y).double()).float()
        terminated = (offset.abs() < SUCCESS_DISTANCE).all(-1)
        return self.position.clone(), -distance, terminated
