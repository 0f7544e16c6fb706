"""Returns, the linear feature baseline and advantages (GAE), per task and batched over tasks.

Discounted reward-to-go: ``G_t = sum_{k >= t} gamma^(k - t) r_k`` (zero after the episode ends).

Linear feature baseline (Duan et al. 2016, rllab's ``LinearFeatureBaseline``): per task, fit ``V(s_t, t) =
phi_t^T w`` to the returns ``G_t`` of that task's trajectories by ridge regression,
``w = (Phi^T Phi + c I)^{-1} Phi^T G`` (``c = 1e-5``, raised tenfold while the solve is not finite), with

    phi_t = [s_t, s_t^2, t/100, (t/100)^2, (t/100)^3, 1]        (s_t clipped to [-10, 10]).

Advantages (Schulman et al. 2016, GAE): ``delta_t = r_t + gamma V_{t+1} - V_t`` (``V = 0`` after the last
step), ``A_t = sum_k (gamma lambda)^k delta_{t+k}``. With ``lambda = 1`` this is ``G_t - V_t``; without a
baseline ``V = 0`` and ``A_t = G_t`` (REINFORCE). Optionally each task's advantages are normalised to mean 0
and standard deviation 1 over its valid steps (rllab's ``center_adv``, used by the paper); the scale
``std`` is returned so that objectives built on normalised advantages can be put back on the return's scale.
"""

from __future__ import annotations

import torch

from torchmaml.rl.episodes import Episodes

RIDGE = 1e-5
EPSILON = 1e-8


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """``G_t`` along the last axis (time)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = (rewards[..., t] + discount * running) * mask[..., t]
        returns[..., t] = running
    return returns


def linear_feature_values(episodes: Episodes, returns: torch.Tensor) -> torch.Tensor:
    """The baseline ``V(s_t, t)`` fitted to ``returns`` on each task separately: ``[T, N, H]``."""
    observations = episodes.observations.double().clamp(-10, 10)
    horizon = observations.shape[-2]
    time = (torch.arange(horizon, dtype=torch.float64) / 100.0).expand(*observations.shape[:-1])[..., None]
    ones = torch.ones_like(time)
    features = torch.cat([observations, observations**2, time, time**2, time**3, ones], dim=-1)
    mask = episodes.mask.double()[..., None]
    phi = (features * mask).flatten(1, 2)  # [T, N * H, F]
    target = (returns.double()[..., None] * mask).flatten(1, 2)
    gram, moment = phi.transpose(1, 2) @ phi, phi.transpose(1, 2) @ target
    identity = torch.eye(gram.shape[-1], dtype=torch.float64)
    for power in range(5):
        weights = torch.linalg.solve(gram + RIDGE * 10**power * identity, moment)
        if torch.isfinite(weights).all():
            break
    return (features @ weights[:, None]).squeeze(-1).to(returns.dtype) * episodes.mask


def advantages(
    episodes: Episodes,
    discount: float,
    gae_lambda: float = 1.0,
    value_baseline: bool = True,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [T, N, H], scale [T])``: advantages of every step (0 at masked steps) and each task's
    normalisation scale (the standard deviation divided out; 1 when ``normalize`` is off)."""
    rewards, mask = episodes.rewards * episodes.mask, episodes.mask
    if value_baseline:
        values = linear_feature_values(episodes, discounted_returns(rewards, mask, discount))
    else:
        values = torch.zeros_like(rewards)
    advantage = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    next_value = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[..., t] + discount * next_value - values[..., t]
        running = (delta + discount * gae_lambda * running) * mask[..., t]
        advantage[..., t] = running
        next_value = values[..., t]
    scale = torch.ones(rewards.shape[0], dtype=rewards.dtype)
    if normalize:
        count = mask.sum((1, 2))
        mean = advantage.sum((1, 2)) / count
        centred = (advantage - mean[:, None, None]) * mask
        scale = (centred.pow(2).sum((1, 2)) / count).sqrt() + EPSILON
        advantage = centred / scale[:, None, None]
    return advantage, scale
