"""TRPO: conjugate gradient, the step's KL limit, and Fisher-vector products through the adaptation."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.func import grad, jvp, vjp, vmap

from torchmaml.functional import FunctionalModel
from torchmaml.linalg import conjugate_gradient
from torchmaml.pytree import flatten, unflatten
from torchmaml.rl.config import build_config
from torchmaml.rl.maml_trpo import fisher_vector_product_of, meta_update, sample_phases
from torchmaml.rl.objectives import adapt, inner_step, log_probs, meta_objective, sampling_step
from torchmaml.rl.policy import GaussianMLPPolicy, distribution, gaussian_kl
from torchmaml.rl.sampler import BatchedNavigationSampler
from torchmaml.rl.trpo import trpo_step


def spd(n: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_conjugate_gradient_solves_a_positive_definite_system():
    matrix, b = spd(12), torch.arange(12.0, dtype=torch.float64)
    x = conjugate_gradient(lambda v: matrix @ v, b, iterations=40, tolerance=1e-10)
    torch.testing.assert_close(matrix @ x, b)


def test_trpo_step_reaches_the_kl_limit_of_a_quadratic_model_along_the_natural_gradient():
    fisher, gradient = spd(6, seed=1), torch.linspace(-1, 1, 6, dtype=torch.float64)

    def evaluate(step):  # the measured KL is a little flatter than the quadratic model (at the limit: rounding)
        return float(gradient @ step), 0.99 * float(0.5 * step @ fisher @ step)

    result = trpo_step(gradient, lambda v: fisher @ v, evaluate, max_kl=0.01, cg_iterations=6)
    assert result.accepted and result.backtracks == 0
    assert result.kl == pytest.approx(0.0099, rel=1e-6)
    natural = torch.linalg.solve(fisher, gradient)
    torch.testing.assert_close(result.step / result.step.norm(), natural / natural.norm())
    rejected = trpo_step(gradient, lambda v: fisher @ v, lambda step: (-1.0, 0.0), max_kl=0.01)
    assert not rejected.accepted and rejected.step.eq(0).all()


@pytest.fixture(scope="module")
def navigation_batch():
    config = build_config({"meta_batch_size": 3, "trajectories": 4, "hidden": [16]})
    torch.manual_seed(0)
    policy = FunctionalModel(GaussianMLPPolicy(2, 2, hidden=(16,)))
    sampler = BatchedNavigationSampler(horizon=15)
    generator = torch.Generator().manual_seed(0)
    tasks = sampler.sample_tasks(3, generator)
    phases = sample_phases(sampler, policy, policy.parameters(), tasks, generator, config, [0.1])
    return config, policy, phases


@pytest.mark.parametrize("estimator", ["dice", "plain"])
def test_fisher_vector_product_through_the_adaptation_is_the_hessian_of_the_mean_kl(navigation_batch, estimator):
    _, policy, phases = navigation_batch
    params = policy.parameters()
    inner, outer = [phases[0].phase()], phases[-1].episodes
    mask, counts = outer.mask, outer.mask.sum((1, 2))

    def outputs(w):
        adapted = vmap(lambda task_inner: adapt(policy, w, task_inner, [0.1], estimator))(inner)
        return vmap(functools.partial(distribution, policy))(adapted, outer.observations)

    old_mean, old_log_std = (t.detach() for t in outputs(params))

    def mean_kl(w):
        mean, log_std = outputs(w)
        return ((gaussian_kl(old_mean, old_log_std, mean, log_std) * mask).sum((1, 2)) / counts).mean()

    v = unflatten(torch.randn(flatten(params).numel(), generator=torch.Generator().manual_seed(1)), params)
    hessian_vector = flatten(jvp(grad(mean_kl), (params,), (v,))[1])  # third derivatives of the inner objective
    product = fisher_vector_product_of(outputs, params, old_log_std, mask, damping=0.0)(flatten(v))
    torch.testing.assert_close(product, hessian_vector, rtol=2e-3, atol=2e-6)


@pytest.mark.parametrize(
    ("estimator", "fisher"),
    [("exact", "exact"), ("dice", "exact"), ("dice", "post_adaptation"), ("first_order", "exact")],
)
def test_meta_update_steps_within_the_kl_limit(navigation_batch, estimator, fisher):
    config, policy, phases = navigation_batch
    config = config.model_copy(update={"estimator": estimator, "fisher": fisher})
    params = policy.parameters()
    new_params, metrics = meta_update(policy, params, phases, config, [0.1], estimator)
    assert metrics["accepted"] == 1.0 and metrics["improvement"] > 0
    # the KL between the old and new post-adaptation policies, recomputed independently
    inner, outer = [phases[0].phase()], phases[-1].episodes

    def post_adaptation(w):
        adapted = vmap(lambda task_inner: adapt(policy, w, task_inner, [0.1], estimator))(inner)
        return vmap(functools.partial(distribution, policy))(adapted, outer.observations)

    with torch.no_grad():
        kl = gaussian_kl(*post_adaptation(params), *post_adaptation(new_params))
    mean_kl = ((kl * outer.mask).sum((1, 2)) / outer.mask.sum((1, 2))).mean()
    assert 0 < float(mean_kl) <= config.max_kl
    assert float(mean_kl) == pytest.approx(metrics["kl"], rel=1e-4)


def test_two_inner_steps_meta_update_within_the_kl_limit(navigation_batch):
    config, policy, _ = navigation_batch
    sampler = BatchedNavigationSampler(horizon=15)
    generator = torch.Generator().manual_seed(5)
    tasks = sampler.sample_tasks(3, generator)
    phases = sample_phases(sampler, policy, policy.parameters(), tasks, generator, config, [0.1, 0.1])
    assert len(phases) == 3
    _, metrics = meta_update(policy, policy.parameters(), phases, config, [0.1, 0.1], "exact")
    assert metrics["accepted"] == 1.0 and 0 < metrics["kl"] <= config.max_kl


def test_the_sampling_step_is_the_first_order_inner_step_and_the_behaviour_log_probs(navigation_batch):
    _, policy, phases = navigation_batch
    params, (episodes, advantage, _) = policy.parameters(), phases[0].phase()
    point = {name: p.expand(3, *p.shape) for name, p in params.items()}
    fused, behaviour = vmap(functools.partial(sampling_step, policy, lr=0.1))(point, episodes, advantage)
    with torch.no_grad():
        expected = vmap(functools.partial(log_probs, policy))(point, episodes)
    step = functools.partial(inner_step, policy, lr=0.1, estimator="first_order")
    separate = vmap(step)(point, (episodes, advantage, expected))
    torch.testing.assert_close(behaviour, expected, rtol=0, atol=0)
    torch.testing.assert_close(behaviour, phases[0].log_probs, rtol=0, atol=0)
    for name in params:
        torch.testing.assert_close(fused[name], separate[name], rtol=0, atol=0)


@pytest.mark.parametrize("estimator", ["exact", "plain"])
def test_meta_objective_returns_the_post_adaptation_policy_it_evaluates(navigation_batch, estimator):
    _, policy, phases = navigation_batch
    params, inner, outer = policy.parameters(), [phases[0].phase()], phases[-1].phase()
    value = torch.zeros(3)
    objective = functools.partial(meta_objective, policy, lrs=[0.1], estimator=estimator)
    with torch.no_grad():
        _, adapted = vmap(objective, (None, 0, 0, 0))(params, inner, outer, value)
        mean, log_std = vmap(functools.partial(distribution, policy))(adapted.params, outer[0].observations)
    torch.testing.assert_close(adapted.mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(adapted.log_std, log_std, rtol=0, atol=0)


def test_linearized_fisher_vector_product_equals_a_jvp_then_a_vjp():
    """The product linearizes the outputs once; it must equal ``J^T (M (J v))`` with a fresh ``jvp`` each time
    (float64, through a first-order adaptation)."""
    config = build_config({"meta_batch_size": 2, "trajectories": 3, "hidden": [8]})
    torch.manual_seed(0)
    policy = FunctionalModel(GaussianMLPPolicy(2, 2, hidden=(8,), dtype=torch.float64))
    sampler = BatchedNavigationSampler(horizon=10)
    generator = torch.Generator().manual_seed(0)
    tasks = sampler.sample_tasks(2, generator)
    phases = sample_phases(sampler, policy, policy.parameters(), tasks, generator, config, [0.1])
    params, inner, outer = policy.parameters(), [phases[0].phase()], phases[-1].episodes

    def outputs(w):
        adapted = vmap(lambda task_inner: adapt(policy, w, task_inner, [0.1], "dice"))(inner)
        return vmap(functools.partial(distribution, policy))(adapted, outer.observations)

    old_log_std = outputs(params)[1].detach()
    product = fisher_vector_product_of(outputs, params, old_log_std, outer.mask, damping=0.1)
    weight = (outer.mask / (outer.mask.sum((1, 2))[:, None, None] * 2))[..., None]
    for seed in range(3):
        v = torch.randn(flatten(params).numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        _, (d_mean, d_log_std) = jvp(outputs, (params,), (unflatten(v, params),))
        _, pullback = vjp(outputs, params)
        (pulled,) = pullback((weight * torch.exp(-2 * old_log_std) * d_mean, 2 * weight * d_log_std))
        torch.testing.assert_close(product(v), flatten(pulled) + 0.1 * v, rtol=1e-10, atol=1e-12)
