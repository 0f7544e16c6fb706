"""Gaussian policies called as pure functions of their parameters.

A policy is any ``nn.Module`` whose ``forward(observations [..., obs_dim])`` returns ``(mean, log_std)`` of a
diagonal Gaussian over actions: ``mean`` is ``[..., act_dim]`` and ``log_std`` broadcasts to it (a learned
state-independent vector, or a state-dependent head). The module is never mutated: it is evaluated at explicit
parameters through ``torchmaml.functional.FunctionalModel``, so the inner loop can adapt it and the outer
loop can differentiate through the adaptation.

``GaussianMLPPolicy`` is the paper's policy (Finn et al. 2017, §5.3, after Duan et al. 2016): two hidden
layers of 100 ReLU units, Xavier-uniform weights, zero biases, and a learned log standard deviation
initialised to ``log 1 = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from torchmaml.errors import ModelError
from torchmaml.functional import FunctionalModel, Params
from torchmaml.models.mlp import mlp

LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """``pi(a | s) = N(a; mu_w(s), diag(exp(2 log_std)))`` with ``mu_w`` an MLP."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (100, 100),
        init_log_std: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Initialised in float32 whatever ``dtype`` (so a float64 policy starts from the same weights); the
        environments' observations are converted to the parameters' dtype."""
        super().__init__()
        self.mean = mlp(observation_dim, hidden, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        for module in self.mean:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.to(dtype)

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(observations.to(self.log_std.dtype)), self.log_std


def distribution(policy: FunctionalModel, params: Params, observations: torch.Tensor):
    """``(mean, log_std)`` of the policy at ``params``, ``log_std`` broadcast to the shape of ``mean``."""
    mean, log_std = policy(params, observations)
    return mean, log_std.expand_as(mean)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log N(a; mean, diag(exp(2 log_std)))`` summed over the action axis (the last one)."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """``KL(p || q)`` of two diagonal Gaussians, summed over the action axis:
    ``sum_d log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2``."""
    variance_ratio = torch.exp(2 * (log_std_p - log_std_q))
    mean_term = (mean_p - mean_q) ** 2 * torch.exp(-2 * log_std_q)
    return (log_std_q - log_std_p + 0.5 * (variance_ratio + mean_term) - 0.5).sum(-1)


def check_policy(module: nn.Module, observation_dim: int, action_dim: int) -> None:
    """Raise a ``ModelError`` unless ``module`` maps ``[B, observation_dim]`` to a Gaussian over ``action_dim``."""
    if not isinstance(module, nn.Module):
        raise ModelError(f"the policy must be a torch.nn.Module, got {type(module).__name__}")
    model = FunctionalModel(module)
    params = model.parameters()
    probe = torch.zeros(3, observation_dim, dtype=next(iter(params.values())).dtype)
    try:
        with torch.no_grad():
            mean, log_std = model(params, probe)
            log_std = log_std.expand_as(mean)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ModelError(
            f"the policy must map observations [B, {observation_dim}] to (mean, log_std) of a Gaussian over "
            f"{action_dim} actions: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
        ) from None
    if tuple(mean.shape) != (3, action_dim):
        raise ModelError(
            f"the policy's mean has shape {tuple(mean.shape)} for 3 observations; expected (3, {action_dim})"
        )
