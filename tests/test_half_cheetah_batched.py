"""The batched half-cheetah twin: equal to gymnasium's HalfCheetah-v5 task environments step by step, its sampler
equal to the gymnasium-vector sampler given the same generator, a share rolled out as the whole batch, and the
presets sampling with it by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchmaml.functional import FunctionalModel
from torchmaml.rl.config import load_config
from torchmaml.rl.half_cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv
from torchmaml.rl.half_cheetah_batched import BatchedHalfCheetah, BatchedHalfCheetahSampler, has_batch
from torchmaml.rl.policy import GaussianMLPPolicy
from torchmaml.rl.sampler import VectorEnvSampler, per_task
from torchmaml.rl.train import make_sampler

ENV_CLASSES = [HalfCheetahDirEnv, HalfCheetahVelEnv]
TASKS, TRAJECTORIES = 2, 3


def policy_and_params(tasks: int):
    """A small policy and different parameters for every task (as after adaptation)."""
    torch.manual_seed(0)
    policy = FunctionalModel(GaussianMLPPolicy(17, 6, hidden=(16,)))
    stacked = per_task(policy.parameters(), tasks)
    return policy, {n: p + 0.1 * torch.arange(tasks).view(-1, *[1] * (p.dim() - 1)) for n, p in stacked.items()}


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_mujoco_batch_is_there():
    assert has_batch()  # MuJoCo >= 4: the fast path, not the fallback loop, is what the other tests check


@pytest.mark.parametrize("env_class", ENV_CLASSES)
@pytest.mark.parametrize(("loop", "frame_skip"), [(False, 5), (True, 5), (False, 1)])
def test_the_twin_steps_as_gymnasium_environments(env_class, loop, frame_skip):
    tasks = env_class.sample_tasks(TASKS, torch.Generator().manual_seed(1))
    seeds = torch.tensor([[3, 17, 2**31 - 2], [0, 99, 12345]])
    twin = BatchedHalfCheetah(env_class, TASKS, TRAJECTORIES, loop=loop, frame_skip=frame_skip)
    envs = [
        [env_class(task=tasks[i].numpy(), frame_skip=frame_skip) for _ in range(TRAJECTORIES)] for i in range(TASKS)
    ]
    assert twin.dt == envs[0][0].dt == pytest.approx(0.01 * frame_skip)
    observation = twin.reset(tasks, seeds)
    expected = [[env.reset(seed=int(seeds[i, j]))[0] for j, env in enumerate(row)] for i, row in enumerate(envs)]
    torch.testing.assert_close(observation, torch.tensor(np.array(expected), dtype=torch.float32), rtol=0, atol=0)
    actions = 1.5 * torch.randn(50, TASKS, TRAJECTORIES, 6, generator=torch.Generator().manual_seed(2))  # some clip
    for action in actions:
        observation, reward = twin.step(action)
        steps = [[env.step(action[i, j].numpy()) for j, env in enumerate(row)] for i, row in enumerate(envs)]
        expected_observation = np.array([[s[0] for s in row] for row in steps])
        expected_reward = np.array([[s[1] for s in row] for row in steps])
        torch.testing.assert_close(observation, torch.tensor(expected_observation, dtype=torch.float32))
        torch.testing.assert_close(reward, torch.tensor(expected_reward, dtype=torch.float32), rtol=0, atol=1e-6)
    for row in envs:
        for env in row:
            env.close()


@pytest.mark.parametrize(
    ("env_class", "per_round", "frame_skip"),
    [(HalfCheetahDirEnv, TASKS, 5), (HalfCheetahVelEnv, 1, 5), (HalfCheetahDirEnv, 1, 1)],
)
def test_the_sampler_gives_the_gymnasium_sampler_s_episodes(env_class, per_round, frame_skip):
    policy, params = policy_and_params(TASKS)
    tasks = env_class.sample_tasks(TASKS, torch.Generator().manual_seed(1))
    generators = [torch.Generator().manual_seed(5) for _ in "ab"]
    env_kwargs = {"horizon": 40, "frame_skip": frame_skip}
    with VectorEnvSampler(env_class, TRAJECTORIES, per_round, env_kwargs=env_kwargs) as sampler:
        expected = sampler.rollout(policy, params, tasks, TRAJECTORIES, generators[0])
    with BatchedHalfCheetahSampler(env_class, horizon=40, tasks_per_round=per_round, frame_skip=frame_skip) as sampler:
        episodes = sampler.rollout(policy, params, tasks, TRAJECTORIES, generators[1])
    assert episodes.observations.shape == (TASKS, TRAJECTORIES, 40, 17) and episodes.rewards.shape == (2, 3, 40)
    assert_same(expected, episodes)
    assert torch.equal(generators[0].get_state(), generators[1].get_state())


@pytest.mark.parametrize("per_round", [1, 2])
def test_a_share_is_rolled_out_as_the_whole_batch(per_round):
    """In the same rounds (tasks 0-1 and 2-3 for two per round): bit for bit; the generator used as the whole
    batch uses it."""
    policy, params = policy_and_params(4)
    tasks = HalfCheetahVelEnv.sample_tasks(4, torch.Generator().manual_seed(1))
    generators = [torch.Generator().manual_seed(4) for _ in "ab"]
    sampler = BatchedHalfCheetahSampler(HalfCheetahVelEnv, horizon=10, tasks_per_round=per_round)
    whole = sampler.rollout(policy, params, tasks, 2, generators[0])
    part = sampler.rollout(policy, {n: p[2:4] for n, p in params.items()}, tasks, 2, generators[1], range(2, 4))
    for x, y in zip(part, whole, strict=True):
        assert torch.equal(x, y[2:4])
    assert torch.equal(generators[0].get_state(), generators[1].get_state())


def test_other_rounds_give_the_episodes_up_to_rounding():
    policy, params = policy_and_params(3)
    tasks = HalfCheetahDirEnv.sample_tasks(3, torch.Generator().manual_seed(1))
    episodes = [
        BatchedHalfCheetahSampler(HalfCheetahDirEnv, 3, per_round).rollout(
            policy, params, tasks, 2, torch.Generator().manual_seed(4)
        )
        for per_round in (None, 2)  # one round of three tasks; a round of two, then one padded to two
    ]
    assert_same(*episodes)


def test_the_presets_sample_with_the_twin_unless_told_otherwise():
    for preset in ("half-cheetah-dir", "half-cheetah-vel"):
        with make_sampler(load_config(preset, ["trajectories=2", "meta_batch_size=2"])) as sampler:
            assert isinstance(sampler, BatchedHalfCheetahSampler) and sampler.horizon == 200
            assert sampler.tasks_per_round == 2  # the preset's 20, at most the meta-batch
    config = load_config("half-cheetah-dir", ["trajectories=2", "meta_batch_size=2", 'sampler="gymnasium"'])
    with make_sampler(config) as sampler:
        assert isinstance(sampler, VectorEnvSampler)
