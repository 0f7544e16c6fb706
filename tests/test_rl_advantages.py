"""Returns, the linear feature baseline and GAE."""

from __future__ import annotations

import torch

from torchmaml.rl.advantages import advantages, discounted_returns, linear_feature_values
from torchmaml.rl.episodes import Episodes


def random_episodes(tasks=2, trajectories=3, horizon=6, seed=0) -> Episodes:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(tasks, trajectories, horizon)
    mask[0, 0, 4:] = 0  # one episode ends early
    return Episodes(
        torch.randn(tasks, trajectories, horizon, 2, generator=generator),
        torch.randn(tasks, trajectories, horizon, 2, generator=generator),
        torch.randn(tasks, trajectories, horizon, generator=generator),
        mask,
    )


def test_discounted_returns():
    episodes = random_episodes()
    returns = discounted_returns(episodes.rewards * episodes.mask, episodes.mask, 0.9)
    r, m = episodes.rewards[0, 0], episodes.mask[0, 0]
    expected = [sum(0.9 ** (k - t) * r[k] * m[k] for k in range(t, 6)) * m[t] for t in range(6)]
    torch.testing.assert_close(returns[0, 0], torch.stack(expected))


def test_linear_feature_baseline_fits_returns_in_its_span_per_task():
    episodes = random_episodes(trajectories=20, horizon=30)
    obs, t = episodes.observations, torch.arange(30.0).expand(2, 20, 30) / 100
    weights = torch.tensor([[1.0, -2.0, 0.5, 0.3], [0.2, 0.1, -1.0, 3.0]])  # one target per task
    target = (
        weights[:, None, None, 0] * obs[..., 0]
        + weights[:, None, None, 1] * obs[..., 1] ** 2
        + weights[:, None, None, 2] * t**3
        + weights[:, None, None, 3]
    ) * episodes.mask
    torch.testing.assert_close(linear_feature_values(episodes, target), target, atol=1e-3, rtol=1e-3)


def test_gae_special_cases_and_normalisation():
    episodes = random_episodes()
    returns = discounted_returns(episodes.rewards * episodes.mask, episodes.mask, 0.95)
    plain, scale = advantages(episodes, 0.95, gae_lambda=1.0, value_baseline=False, normalize=False)
    torch.testing.assert_close(plain, returns)
    assert scale.eq(1).all()
    baseline = linear_feature_values(episodes, returns)
    lam1, _ = advantages(episodes, 0.95, gae_lambda=1.0, value_baseline=True, normalize=False)
    torch.testing.assert_close(lam1, returns - baseline, atol=1e-5, rtol=1e-5)
    lam0, _ = advantages(episodes, 0.95, gae_lambda=0.0, value_baseline=True, normalize=False)
    next_value = torch.cat([baseline[..., 1:], torch.zeros_like(baseline[..., :1])], -1)
    torch.testing.assert_close(lam0, (episodes.rewards + 0.95 * next_value - baseline) * episodes.mask)
    normalised, scale = advantages(episodes, 0.95, gae_lambda=0.97)
    mask = episodes.mask
    for i in range(2):
        valid = normalised[i][mask[i] > 0]
        torch.testing.assert_close(valid.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(valid.pow(2).mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert normalised[0, 0, 4:].eq(0).all() and scale.gt(0).all()
