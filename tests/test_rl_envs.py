"""Task environments: the gymnasium API (env checker), determinism by seed, the paper's rewards, and the
batched 2D navigation equal to the gymnasium one step by step."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from torchmaml.rl.navigation import BatchedNavigation2D, Navigation2DEnv, sample_goals

ENVS = ["navigation2d", "half-cheetah-dir", "half-cheetah-vel"]


def env_class(name: str):
    if name == "navigation2d":
        return Navigation2DEnv
    pytest.importorskip("mujoco")
    from torchmaml.rl.half_cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv

    return HalfCheetahDirEnv if name == "half-cheetah-dir" else HalfCheetahVelEnv


@pytest.mark.parametrize("name", ENVS)
def test_env_checker_passes(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's notes on unbounded observation spaces
        check_env(env_class(name)(), skip_render_check=True)


def rollout(env, seed: int, steps: int = 15) -> list:
    observation, info = env.reset(seed=seed)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, *env.action_space.shape)).astype(np.float32)
    record = [observation, info["task"]]
    for action in actions:
        observation, reward, terminated, truncated, _ = env.step(action)
        record += [observation, reward, terminated, truncated]
    return record


@pytest.mark.parametrize("name", ENVS)
def test_environments_are_deterministic_by_seed(name):
    cls = env_class(name)
    first, second = rollout(cls(), seed=3), rollout(cls(), seed=3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = [rollout(cls(), seed=s)[1] for s in range(4, 10)]  # the task is drawn from the seeded generator
    assert any(not np.array_equal(first[1], task) for task in other)


@pytest.mark.parametrize("name", ENVS)
def test_task_samplers_are_deterministic_and_in_range(name):
    cls = env_class(name)
    tasks = cls.sample_tasks(500, torch.Generator().manual_seed(1))
    assert torch.equal(tasks, cls.sample_tasks(500, torch.Generator().manual_seed(1)))
    if name == "navigation2d":
        assert tasks.shape == (500, 2) and tasks.min() >= -0.5 and tasks.max() <= 0.5
    elif name == "half-cheetah-dir":
        assert set(tasks.flatten().tolist()) == {-1.0, 1.0}
    else:
        assert tasks.shape == (500, 1) and tasks.min() >= 0 and tasks.max() <= 2 and tasks.std() > 0.5


def test_a_fixed_task_and_the_horizon():
    env = Navigation2DEnv(task=np.array([0.3, -0.2]), horizon=7)
    _, info = env.reset(seed=0)
    np.testing.assert_allclose(info["task"], [0.3, -0.2])
    _, info = env.reset(options={"task": np.array([0.1, 0.1])})
    np.testing.assert_allclose(info["task"], [0.1, 0.1])
    truncations = [env.step(np.array([-0.05, 0.0], dtype=np.float32))[3] for _ in range(7)]
    assert truncations == [False] * 6 + [True]


def test_navigation_reward_and_termination():
    env = Navigation2DEnv(task=np.array([0.15, 0.0]))
    env.reset(seed=0)
    observation, reward, terminated, _, _ = env.step(np.array([5.0, 0.0], dtype=np.float32))  # clipped to 1: moves 0.1
    np.testing.assert_allclose(observation, [0.1, 0.0], rtol=1e-6)
    assert reward == pytest.approx(-0.05, rel=1e-5) and not terminated
    _, reward, terminated, _, _ = env.step(np.array([0.45, 0.05], dtype=np.float32))
    assert terminated and reward == pytest.approx(-np.hypot(0.005, 0.005), rel=1e-4)


def test_batched_navigation_equals_the_gymnasium_environment_step_by_step():
    goals = torch.cat([sample_goals(3, torch.Generator().manual_seed(0)), torch.tensor([[0.04, -0.03]])])
    tasks, trajectories = goals.shape[0], 4
    batched = BatchedNavigation2D(goals, trajectories)
    envs = [[Navigation2DEnv(task=goals[i].numpy()) for _ in range(trajectories)] for i in range(tasks)]
    observation = batched.reset()
    for i in range(tasks):
        for n in range(trajectories):
            np.testing.assert_array_equal(envs[i][n].reset(seed=0)[0], observation[i, n].numpy())
    generator = torch.Generator().manual_seed(1)
    done = torch.zeros(tasks, trajectories, dtype=torch.bool)
    for _ in range(100):
        # half the copies head for the goal (so that some terminate), half act at random (beyond the clip)
        towards = 10 * (goals[:, None] - observation) + 0.03 * torch.randn(tasks, trajectories, 2, generator=generator)
        wild = 3 * torch.randn(tasks, trajectories, 2, generator=generator)
        action = torch.where(torch.arange(trajectories)[None, :, None] % 2 == 0, towards, wild)
        observation, reward, terminated = batched.step(action)
        for i in range(tasks):
            for n in range(trajectories):
                if done[i, n]:
                    continue
                obs, r, term, _, _ = envs[i][n].step(action[i, n].numpy())
                np.testing.assert_array_equal(obs, observation[i, n].numpy())
                assert r == float(reward[i, n]) and term == bool(terminated[i, n])
        done |= terminated
    assert done.any() and not done.all()


def test_half_cheetah_rewards_are_the_papers():
    env_class("half-cheetah-dir")
    from torchmaml.rl.half_cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv

    action = np.array([2.0, -0.5, 0.3, -3.0, 0.1, 0.9], dtype=np.float32)  # two entries beyond [-1, 1]
    control = 0.05 * np.sum(np.clip(action, -1, 1) ** 2)
    cases = [
        (HalfCheetahDirEnv, -1.0, lambda v: -v),
        (HalfCheetahDirEnv, 1.0, lambda v: v),
        (HalfCheetahVelEnv, 1.3, lambda v: -abs(v - 1.3)),
    ]
    for cls, task, forward in cases:
        env = cls(task=np.array([task]), horizon=3)
        env.reset(seed=0)
        for t in range(3):
            _, reward, terminated, truncated, info = env.step(action)
            assert reward == pytest.approx(forward(info["x_velocity"]) - control, rel=1e-5)
            assert not terminated and truncated == (t == 2)
