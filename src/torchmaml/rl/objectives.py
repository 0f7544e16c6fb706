r"""Policy-gradient objectives and the differentiable inner step (MAML for policies, Finn et al. 2017, §3.2).

All functions here act on ONE task (tensors ``[N, H, ...]``); callers ``torch.func.vmap`` them over tasks. A
phase is ``(episodes, advantages, behaviour_log_probs)``: ``log pi_old(a_t|s_t)`` under the policy that sampled
the episodes, detached.

**Inner step.** On a task's adaptation episodes ``D`` (sampled from ``pi_w``) with advantages ``A``, the
policy-gradient surrogate and the step are

    J_hat(w; D) = (1/|D|) sum_{n,t} m_{n,t} c_{n,t}(w) A_{n,t},        w' = U(w, D) = w + alpha grad_w J_hat(w; D),

with ``m`` the mask, ``|D| = sum m`` and either ``c_t = log pi_w(a_t|s_t)`` (the plain REINFORCE surrogate)
or the DiCE weights ``c_t = box(W_t) - box(W_{t-1})``, ``W_t = sum_{t' <= t} log pi_w(a_t'|s_t')`` (Foerster
et al. 2018; Farquhar et al. 2019, "Loaded DiCE"), where ``box(x) = exp(x - stop_grad(x))`` is 1 in value but
``grad box(x) = box(x) grad x``. Both give the same gradient, the policy-gradient estimator
``g_hat = (1/|D|) sum m grad log pi(a_t|s_t) A_t``; they differ in their second derivative.

**The meta-objective and its exact gradient ("exact").** The expected return after adaptation is

    J(w) = E_{D ~ pi_w} [ E_{D' ~ pi_{U(w, D)}} [R(D')] ] =: E_{D ~ pi_w} [ V(U(w, D)) ],

and differentiating the expectation over ``D`` (score function) and ``U`` (chain rule) gives

    grad J = E[ (I + alpha d_w g_hat(w, D))^T grad V(w') ]  +  E[ V(w') grad_w log pi_w(D) ].

The first term is what autograd returns through the inner step of the *plain* surrogate: with the samples
held fixed, ``d_w g_hat = hess J_hat`` is exactly the derivative of the update that was taken. The second
term, the pre-adaptation sampling term, never appears when the sampled trajectories are constants to
autograd; DiCE supplies it: the outer objective gets ``+ (box(log pi_w(D)) - 1) * V_hat``, worth 0 but with
gradient ``V_hat grad log pi_w(D)``. ``V_hat`` is an estimate of the post-adaptation objective on the scale of
the outer surrogate, minus a baseline independent of ``D`` (another task's). This estimator is unbiased for
``grad J`` (``tests/test_rl_meta_gradient.py`` checks it against finite differences of ``J`` computed by
quadrature on a Gaussian bandit).

**Why the plain surrogate's second derivative is wrong, and "dice".** In the formulation of the original
MAML code, the inner update stands for the expected gradient, ``w' = w + alpha grad E_{pi_w}[R]``, whose
Jacobian is ``I + alpha hess E[R]`` with

    hess E_{pi_w}[R] = E[ R (hess log pi_w(tau) + grad log pi_w(tau) grad log pi_w(tau)^T) ]

(the sampling distribution depends on ``w`` too). Differentiating the plain surrogate twice gives only
``E[R hess log pi]``: the score outer-product term is lost, so its "Hessian" is biased. The DiCE weights keep
it, ``hess box(W) = box(W) (grad W grad W^T + hess W)``, so ``hess J_hat_DiCE`` is an unbiased estimate of
``hess E[R]`` (with ``lambda = 1``, ``gamma = 1``; the baseline part of ``A`` only adds zero-mean terms, Mao et
al. 2019). The ``"dice"`` estimator uses this inner step and no sampling term (Rothfuss et al. 2019, ProMP,
"formulation I"); to first order in ``alpha`` its extra term ``alpha E[R grad log pi grad log pi^T] grad V``
equals the sampling term, so it differs from ``"exact"`` by ``O(alpha^2)``, usually with less variance.

``"plain"`` is the original MAML code's choice (Finn et al. 2017; ProMP's analysis): the plain surrogate's
second derivative and no sampling term, biased for both formulations. ``"first_order"`` stops the gradient
through ``g_hat``: ``dw'/dw = I`` and no sampling term (FO-MAML).

**Anchoring the box.** Here ``box(x)`` is written ``exp(x - x_old)`` with ``x_old`` the value under the sampling
policy (from ``behaviour_log_probs``). At ``w = w_old`` it equals DiCE's ``exp(x - stop_grad(x))`` with all its
derivatives, so the gradients above are unchanged; elsewhere it is a proper function of ``w``, an importance
weight. TRPO's line search therefore evaluates the very objective whose gradient it follows, for every
estimator (with ``stop_grad`` the DiCE terms would be invisible to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch.func import grad

from torchmaml.functional import FunctionalModel, Params
from torchmaml.inner import sgd_step
from torchmaml.rl.episodes import Episodes
from torchmaml.rl.policy import distribution, gaussian_log_prob

Estimator = Literal["exact", "dice", "plain", "first_order"]

# One adaptation phase of one task: episodes, advantages and behaviour log-probabilities (both detached).
Phase = tuple[Episodes, torch.Tensor, torch.Tensor]


def log_probs(policy: FunctionalModel, params: Params, episodes: Episodes) -> torch.Tensor:
    """``m_t log pi_w(a_t | s_t)`` of one task's episodes: ``[N, H]``."""
    mean, log_std = distribution(policy, params, episodes.observations)
    return gaussian_log_prob(mean, log_std, episodes.actions) * episodes.mask


class Adapted(NamedTuple):
    """One task's adapted parameters ``w_K`` and the post-adaptation policy ``(mean, log_std)`` at the states of
    its post-adaptation episodes ``D'`` (``[N, H, A]`` each), from the forward pass of the outer surrogate."""

    params: Params
    mean: torch.Tensor
    log_std: torch.Tensor


def policy_gradient_objective(policy: FunctionalModel, params: Params, phase: Phase, dice: bool) -> torch.Tensor:
    """``J_hat(w; D)``, plain (``dice=False``) or with the anchored DiCE weights ``box(W_t) - box(W_{t-1})``;
    its gradient at the sampling policy is ``g_hat`` either way."""
    return surrogate(log_probs(policy, params, phase[0]), phase, dice)


def surrogate(log_prob: torch.Tensor, phase: Phase, dice: bool) -> torch.Tensor:
    """``J_hat`` of ``policy_gradient_objective`` from the log-probabilities ``m_t log pi_w(a_t|s_t)`` ``[N, H]``."""
    episodes, advantages, behaviour = phase
    if dice:
        log_ratio = log_prob - behaviour
        cumulative = log_ratio.cumsum(-1)
        weights = torch.exp(cumulative) - torch.exp(cumulative - log_ratio)
    else:
        weights = log_prob
    return (weights * advantages * episodes.mask).sum() / episodes.mask.sum()


def inner_step(policy: FunctionalModel, params: Params, phase: Phase, lr: float, estimator: Estimator) -> Params:
    """``w + alpha grad J_hat(w; D)``: differentiable in ``w`` (second order) unless ``"first_order"``."""

    def loss(point: Params) -> torch.Tensor:
        return -policy_gradient_objective(policy, point, phase, dice=estimator == "dice")

    grads = grad(loss)(params)
    if estimator == "first_order":
        grads = {name: g.detach() for name, g in grads.items()}
    return sgd_step(params, grads, lr)


def sampling_step(
    policy: FunctionalModel, params: Params, episodes: Episodes, advantages: torch.Tensor, lr: float
) -> tuple[Params, torch.Tensor]:
    """The sampler's first-order inner step ``w + alpha g_hat(w; D)`` (detached) and the behaviour
    log-probabilities ``m_t log pi_w(a_t|s_t)`` of ``D`` (sampled from ``pi_w``), from one forward pass: the
    numbers of ``inner_step(..., "first_order")`` and ``log_probs``."""

    def loss(point: Params) -> tuple[torch.Tensor, torch.Tensor]:
        log_prob = log_probs(policy, point, episodes)
        return -surrogate(log_prob, (episodes, advantages, log_prob), dice=False), log_prob

    grads, log_prob = grad(loss, has_aux=True)(params)
    return sgd_step(params, {name: g.detach() for name, g in grads.items()}, lr), log_prob.detach()


def adapt(
    policy: FunctionalModel, params: Params, phases: Sequence[Phase], lrs: Sequence[float], estimator: Estimator
) -> Params:
    """``w_K`` after one inner step per phase, ``w_{k+1} = U(w_k, D_k)`` with step ``lrs[k]``."""
    for phase, lr in zip(phases, lrs, strict=True):
        params = inner_step(policy, params, phase, lr, estimator)
    return params


def meta_objective(
    policy: FunctionalModel,
    params: Params,
    inner: Sequence[Phase],
    outer: Phase,
    value: torch.Tensor,
    lrs: Sequence[float],
    estimator: Estimator,
) -> tuple[torch.Tensor, Adapted]:
    """One task's meta-objective, its adapted parameters ``w_K(w)`` and the post-adaptation policy at the
    states of ``D'`` (``Adapted``: the line search's KL and the Fisher matrix read it, no second forward pass).

    The objective is TRPO's surrogate on the post-adaptation episodes ``D'``,
    ``(1/|D'|) sum m_t (pi_{w_K}(a_t|s_t) / pi_old(a_t|s_t)) A_t``, plus for ``"exact"`` the sampling term
    ``(box(sum_k log pi_{w_k}(D_k)) - 1) * value``. Its gradient in ``w`` at the sampling policy is the task's
    meta-gradient.
    """
    log_ratio = torch.zeros(())
    for phase, lr in zip(inner, lrs, strict=True):
        if estimator == "exact":
            log_ratio = log_ratio + (log_probs(policy, params, phase[0]) - phase[2]).sum()
        params = inner_step(policy, params, phase, lr, estimator)
    episodes, advantages, behaviour = outer
    mean, log_std = distribution(policy, params, episodes.observations)
    log_prob = gaussian_log_prob(mean, log_std, episodes.actions) * episodes.mask
    ratio = torch.exp(log_prob - behaviour)
    objective = (ratio * advantages * episodes.mask).sum() / episodes.mask.sum()
    if estimator == "exact":
        objective = objective + (torch.exp(log_ratio) - 1) * value
    return objective, Adapted(params, mean, log_std)
