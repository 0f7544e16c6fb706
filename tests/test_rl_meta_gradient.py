"""The policy-gradient estimators of ``torchmaml.rl.objectives`` on a one-step Gaussian bandit, where every
expectation is computed exactly (Gauss-Hermite quadrature; the integrands are polynomials or smooth).

Bandit: ``a ~ N(mu, sigma^2)`` with ``w = (mu, s)``, ``sigma = e^s``. With the reward ``r(a) = -(a - g)^2`` the
expected return is ``V(w) = -((mu - g)^2 + sigma^2)``, with gradient ``(-2 (mu - g), -2 sigma^2)`` and Hessian
``diag(-2, -4 sigma^2)``. MAML: ``N`` adaptation samples, one step of size ``alpha``, and
``J(w) = E_D[V(w + alpha g_hat(w, D))]``, the expected post-adaptation return. For ``J`` the bounded reward
``r(a) = exp(-(a - g)^2 / 2)`` is used (``V = exp(-(mu - g)^2 / (2 (1 + sigma^2))) / sqrt(1 + sigma^2)``), so the
adapted parameters stay bounded and the quadrature over adaptation samples converges.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import grad, hessian, vmap
from torch.utils._pytree import tree_map

from torchmaml.functional import FunctionalModel
from torchmaml.rl.episodes import Episodes
from torchmaml.rl.objectives import log_probs, meta_objective, policy_gradient_objective

GOAL, MU, LOG_STD = 0.3, -0.2, math.log(0.6)
NODES = 48


class BanditPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor([MU], dtype=torch.float64))
        self.log_std = nn.Parameter(torch.tensor([LOG_STD], dtype=torch.float64))

    def forward(self, observations):
        return torch.zeros_like(observations) + self.mu, self.log_std


@pytest.fixture(scope="module")
def bandit():
    policy = FunctionalModel(BanditPolicy())
    return policy, policy.parameters()


def quadrature(nodes: int = NODES) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with ``E_{x ~ N(0, 1)}[f(x)] ~ sum_k w_k f(x_k)``."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    return x, w / math.sqrt(2 * math.pi)


def reward(a):
    return -((a - GOAL) ** 2)


def bump(a):
    return (torch if isinstance(a, torch.Tensor) else np).exp(-0.5 * (a - GOAL) ** 2)


def bump_value(mu, s):
    """``V(w)`` of the bump reward."""
    spread = 1 + np.exp(2 * s)
    return np.exp(-0.5 * (mu - GOAL) ** 2 / spread) / np.sqrt(spread)


def episodes(actions: torch.Tensor, reward_fn=reward) -> Episodes:
    """Episodes of one step, ``actions [..., N]``."""
    shape = (*actions.shape, 1)
    return Episodes(
        torch.zeros(*shape, 1, dtype=torch.float64),
        actions[..., None, None],
        reward_fn(actions)[..., None],
        torch.ones(shape, dtype=torch.float64),
    )


def phase(policy, params, batch: Episodes):
    """``(episodes, advantages, behaviour log-probs)``: the rewards as advantages (no baseline)."""
    with torch.no_grad():
        behaviour = vmap(log_probs, in_dims=(None, None, 0))(policy, params, batch)
    return batch, batch.rewards, behaviour


def true_gradient() -> np.ndarray:
    return np.array([-2 * (MU - GOAL), -2 * math.exp(2 * LOG_STD)])


def inner_update(mu, s, eps, alpha):
    """``w + alpha g_hat`` in closed form for samples ``a_i = mu + e^s eps_i`` (eps ``[..., N]``), bump reward."""
    sigma = np.exp(s)
    r = bump(mu + sigma * eps)
    return mu + alpha * np.mean(r * eps / sigma, -1), s + alpha * np.mean(r * (eps**2 - 1), -1)


def post_adaptation_return(mu: float, s: float, alpha: float, samples: int) -> float:
    """``J(w)`` by quadrature over the ``samples`` adaptation draws."""
    x, w = quadrature(64)
    grids = np.meshgrid(*([x] * samples), indexing="ij")
    eps = np.stack([g.ravel() for g in grids], -1)
    weight = np.prod(np.stack(np.meshgrid(*([w] * samples), indexing="ij")), 0).ravel()
    return float(np.sum(weight * bump_value(*inner_update(mu, s, eps, alpha))))


def test_policy_gradient_estimator_is_unbiased(bandit):
    policy, params = bandit
    x, w = quadrature()
    actions = torch.tensor(MU + math.exp(LOG_STD) * x)[:, None]  # one sample per quadrature node
    for dice in (False, True):
        per_node = vmap(grad(policy_gradient_objective, argnums=1), in_dims=(None, None, 0, None))(
            policy, params, phase(policy, params, episodes(actions)), dice
        )
        expected = np.array([float((torch.tensor(w) * per_node[k].squeeze(-1)).sum()) for k in ("mu", "log_std")])
        np.testing.assert_allclose(expected, true_gradient(), rtol=1e-10)


def test_policy_gradient_estimator_is_unbiased_by_monte_carlo(bandit):
    policy, params = bandit
    generator = torch.Generator().manual_seed(0)
    actions = MU + math.exp(LOG_STD) * torch.randn(1, 100_000, generator=generator, dtype=torch.float64)
    batch = phase(policy, params, episodes(actions))
    per_sample = vmap(grad(policy_gradient_objective, argnums=1), in_dims=(None, None, 1, None))(
        policy, params, tree_map(lambda t: t[:, :, None], batch), False
    )
    for k, truth in zip(("mu", "log_std"), true_gradient(), strict=True):
        values = per_sample[k].flatten()
        z = (values.mean() - truth) / (values.std() / math.sqrt(values.numel()))
        assert abs(float(z)) < 4


def test_dice_hessian_is_unbiased_and_the_plain_one_is_not(bandit):
    policy, params = bandit
    x, w = quadrature()
    actions = torch.tensor(MU + math.exp(LOG_STD) * x)[:, None]
    truth = np.diag([-2.0, -4 * math.exp(2 * LOG_STD)])
    expected = {}
    for dice in (False, True):
        per_node = vmap(hessian(policy_gradient_objective, argnums=1), in_dims=(None, None, 0, None))(
            policy, params, phase(policy, params, episodes(actions)), dice
        )
        names = ("mu", "log_std")
        matrix = [[float((torch.tensor(w) * per_node[i][j].flatten()).sum()) for j in names] for i in names]
        expected[dice] = np.array(matrix)
    np.testing.assert_allclose(expected[True], truth, rtol=1e-10, atol=1e-12)
    assert np.abs(expected[False] - truth).max() > 0.1  # E[r hess log pi] misses E[r score score^T]


def expected_meta_gradient(policy, params, estimator: str, alpha: float, samples: int = 2) -> np.ndarray:
    """``E[grad meta_objective]`` over adaptation and post-adaptation samples, by quadrature."""
    x, w = quadrature()
    grids = np.meshgrid(*([x] * samples), indexing="ij")
    eps = np.stack([g.ravel() for g in grids], -1)  # [M, N] adaptation draws
    inner_weight = np.prod(np.stack(np.meshgrid(*([w] * samples), indexing="ij")), 0).ravel()
    mu1, s1 = inner_update(MU, LOG_STD, eps, alpha)  # where the adapted policy samples
    outer_actions = mu1[:, None] + np.exp(s1)[:, None] * x[None, :]  # [M, K]
    weight = torch.tensor((inner_weight[:, None] * w[None, :]).ravel())
    inner_actions = torch.tensor(np.repeat(eps * math.exp(LOG_STD) + MU, len(x), axis=0))  # [M*K, N]
    outer = torch.tensor(outer_actions.reshape(-1, 1))
    inner_episodes, outer_episodes = episodes(inner_actions, bump), episodes(outer, bump)
    outer_log_probs = torch.tensor(
        -0.5 * ((outer_actions - mu1[:, None]) / np.exp(s1)[:, None]) ** 2 - s1[:, None] - 0.5 * math.log(2 * math.pi)
    ).reshape(-1, 1, 1)
    inner_phase = phase(policy, params, inner_episodes)
    outer_phase = (outer_episodes, outer_episodes.rewards, outer_log_probs)

    def task_objective(w_, inner, outer_, value):
        return meta_objective(policy, w_, [inner], outer_, value, lrs=[alpha], estimator=estimator)[0]

    def expected_objective(w_):
        values = vmap(task_objective, in_dims=(None, 0, 0, 0))(w_, inner_phase, outer_phase, bump(outer[:, 0]))
        return (weight * values).sum() / weight.sum()

    gradient = grad(expected_objective)(params)
    return np.array([float(gradient["mu"][0]), float(gradient["log_std"][0])])


def finite_difference_of_post_adaptation_return(alpha: float, samples: int = 2, h: float = 1e-5) -> np.ndarray:
    def j(mu, s):
        return post_adaptation_return(mu, s, alpha, samples)

    return np.array(
        [(j(MU + h, LOG_STD) - j(MU - h, LOG_STD)) / (2 * h), (j(MU, LOG_STD + h) - j(MU, LOG_STD - h)) / (2 * h)]
    )


def test_exact_meta_gradient_equals_finite_differences_of_the_expected_post_adaptation_return(bandit):
    policy, params = bandit
    errors = {}
    for alpha in (0.1, 0.05):
        reference = finite_difference_of_post_adaptation_return(alpha)
        exact = expected_meta_gradient(policy, params, "exact", alpha)
        np.testing.assert_allclose(exact, reference, rtol=1e-7, atol=1e-9)
        for estimator in ("dice", "first_order"):
            error = np.abs(expected_meta_gradient(policy, params, estimator, alpha) - reference).max()
            errors[estimator, alpha] = error
    # "dice" (unbiased inner Hessian, no sampling term) is off by O(alpha^2), first order by O(alpha).
    assert errors["dice", 0.05] < 0.3 * errors["dice", 0.1]
    assert errors["first_order", 0.05] > 0.4 * errors["first_order", 0.1]
    assert errors["dice", 0.05] < 0.5 * errors["first_order", 0.05]
