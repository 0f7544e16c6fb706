"""Samplers: deterministic from a generator, masks after termination, the gymnasium-vector sampler equal to
the batched one, and worker processes shut down on errors and interrupts."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from torchmaml.functional import FunctionalModel
from torchmaml.rl.navigation import Navigation2DEnv
from torchmaml.rl.policy import GaussianMLPPolicy
from torchmaml.rl.sampler import BatchedNavigationSampler, VectorEnvSampler, per_task

CONTEXT = "fork"  # workers start in milliseconds; "spawn" (the default) would import torch in each of them


def small_policy(log_std: float = 0.0):
    torch.manual_seed(0)
    policy = FunctionalModel(GaussianMLPPolicy(2, 2, hidden=(16,), init_log_std=log_std))
    return policy, policy.parameters()


def per_task_params(params, tasks: int):
    """Different parameters for every task (as after adaptation)."""
    stacked = per_task(params, tasks)
    return {name: p + 0.1 * torch.arange(tasks).view(-1, *[1] * (p.dim() - 1)) for name, p in stacked.items()}


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_batched_sampler_is_deterministic_with_the_right_shapes():
    policy, params = small_policy()
    sampler = BatchedNavigationSampler(horizon=30)
    tasks = sampler.sample_tasks(3, torch.Generator().manual_seed(0))
    runs = [
        sampler.rollout(policy, per_task_params(params, 3), tasks, 5, torch.Generator().manual_seed(2)) for _ in "ab"
    ]
    assert_same(*runs)
    episodes = runs[0]
    assert episodes.observations.shape == (3, 5, 30, 2) and episodes.rewards.shape == (3, 5, 30)
    assert episodes.returns().shape == (3, 5)
    other = sampler.rollout(policy, per_task_params(params, 3), tasks, 5, torch.Generator().manual_seed(3))
    assert not torch.equal(other.actions, episodes.actions)


def test_steps_after_termination_are_masked():
    policy, params = small_policy(log_std=-20.0)  # nearly deterministic
    params = {**params, "mean.2.weight": torch.zeros_like(params["mean.2.weight"])}  # mean action 0: stay at 0
    sampler = BatchedNavigationSampler(horizon=10)
    tasks = torch.tensor([[0.005, -0.005], [0.3, 0.3]])  # the first goal is reached at once
    episodes = sampler.rollout(policy, per_task(params, 2), tasks, 2, torch.Generator().manual_seed(0))
    assert episodes.mask[0, :, 0].eq(1).all() and episodes.mask[0, :, 1:].eq(0).all()
    assert episodes.mask[1].eq(1).all()


@pytest.mark.parametrize("tasks_per_round", [1, 2, 3])
def test_vector_env_sampler_equals_the_batched_sampler(tasks_per_round):
    policy, params = small_policy()
    tasks = torch.tensor([[0.2, -0.1], [-0.4, 0.3], [0.01, 0.02]])
    batched = BatchedNavigationSampler(horizon=25)
    expected = batched.rollout(policy, per_task_params(params, 3), tasks, 3, torch.Generator().manual_seed(4))
    with VectorEnvSampler(Navigation2DEnv, 3, tasks_per_round, env_kwargs={"horizon": 25}) as sampler:
        episodes = sampler.rollout(policy, per_task_params(params, 3), tasks, 3, torch.Generator().manual_seed(4))
    masked = [t * e.mask[..., None] if t.dim() == 4 else t * e.mask for e in (expected, episodes) for t in e[:3]]
    assert_same(masked[:3], masked[3:])
    assert_same([expected.mask], [episodes.mask])


@pytest.mark.filterwarnings("ignore:.*ERROR:UserWarning")  # gymnasium logs the worker's error
def test_asynchronous_workers_match_and_shut_down_on_interrupt_and_error():
    policy, params = small_policy()
    tasks = torch.tensor([[0.2, -0.1], [-0.4, 0.3]])
    expected = BatchedNavigationSampler(horizon=5).rollout(
        policy, per_task(params, 2), tasks, 2, torch.Generator().manual_seed(1)
    )
    with (
        pytest.raises(KeyboardInterrupt),
        VectorEnvSampler(
            Navigation2DEnv, 2, 1, asynchronous=True, env_kwargs={"horizon": 5}, context=CONTEXT
        ) as sampler,
    ):
        episodes = sampler.rollout(policy, per_task(params, 2), tasks, 2, torch.Generator().manual_seed(1))
        assert_same(expected, episodes)
        raise KeyboardInterrupt
    assert multiprocessing.active_children() == []
    bad_tasks = torch.zeros(2, 3)  # a 2D-navigation goal has two coordinates: reset fails in the workers
    with (
        pytest.raises(ValueError),
        VectorEnvSampler(
            Navigation2DEnv, 2, 1, asynchronous=True, env_kwargs={"horizon": 5}, context=CONTEXT
        ) as sampler,
    ):
        sampler.rollout(policy, per_task(params, 2), bad_tasks, 2, torch.Generator().manual_seed(1))
    assert multiprocessing.active_children() == []
