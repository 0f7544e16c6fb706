"""The survey's stochastic MAML estimator with three independent batches ``D_in``, ``D_o``, ``D_h``.

For task ``i`` with inner rate ``alpha``, support set ``D_in``, query set ``D_o`` and a third batch ``D_h``
on which the Hessian is taken (Fallah, Mokhtari, Ozdaglar 2020, "On the convergence theory of
gradient-based model-agnostic meta-learning algorithms"; the survey's three-batch estimator), one inner
step gives

    G_i = (I - alpha H_i(w; D_h)) grad f_i(w - alpha grad f_i(w; D_in); D_o).

Using an independent ``D_h`` makes the Hessian estimate independent of the gradient it multiplies, which
is what the convergence analysis needs. With ``K`` steps ``w_{s+1} = w_s - alpha_s grad f_i(w_s; D_in)``
the estimate is the reverse-mode product

    G_i = (I - alpha_0 H_i(w_0; D_h)) ... (I - alpha_{K-1} H_i(w_{K-1}; D_h)) grad f_i(w_K; D_o),

applied right to left with one Hessian-vector product per step (``hvp.hessian_vector_product``), never a
formed Hessian: the adjoint ``v_K = grad f_i(w_K; D_o)``, ``v_s = v_{s+1} - H_i(w_s; D_h)(alpha_s v_{s+1})``,
``G_i = v_0``. The inner steps are taken without a graph (only the points ``w_s`` and gradients ``g_s``
are kept), so memory grows by two parameter copies per step instead of one activation graph per step as
in ``unrolled``.

With ``D_h = D_in`` this is exactly the ``unrolled`` MAML gradient (up to round-off), so a batch without
``hessian_x``/``hessian_y`` is refused (a ``ConfigError``) rather than silently computing ``unrolled``; the
training task sources draw ``D_h`` when the configuration sets ``hessian_size``. (``hessian_free`` still falls
back to ``D_h = D_in``.) Like ``unrolled`` it also handles per-parameter and
learned inner rates (the rate gradient is ``-sum_s <v_{s+1}, d(alpha_s ⊙ g_s)/d lrs>`` with
``g_s = grad f_i(w_s; D_in)``), inner loops that adapt only some parameters (ANIL: the product then
involves the Hessian's columns of the adapted parameters), and MAML++'s multi-step loss
``sum_s gamma_s f_i(w_s; D_o)`` with ``gamma = problem.step_weights`` (each step's weighted query gradient
joins the adjoint at ``w_s``).

``hessian_free`` (HF-MAML) is this estimator with the Hessian-vector product replaced by a difference of
gradients: both are built by ``reverse_mode_estimate`` below, with a different ``Curvature``.

Usage::

    batch = TaskBatch(support_x, support_y, query_x, query_y, hessian_x, hessian_y)  # D_h optional
    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.4, estimator="three_batch")
    learner.meta_step(batch, optimizer)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import grad, grad_and_value

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task
from torchmaml.estimators.hvp import ScalarFunction, hessian_vector_product, partial_grad, rate_times, scaled
from torchmaml.functional import Params
from torchmaml.inner import InnerLR, sgd_step, step_lr
from torchmaml.linalg import dot

Curvature = Callable[[ScalarFunction, Params, Params, Params], Params]
"""``(f_h, w_s, v, u) -> H_h(w_s) u`` (exactly or approximately): ``v`` is the adjoint at ``w_{s+1}`` on the
adapted parameters, ``u = alpha_s ⊙ v`` the vector to multiply, zero on the parameters the inner loop
does not adapt."""


@dataclass(frozen=True)
class ThreeBatch(Estimator):
    """The three-batch MAML gradient of one task, with exact Hessian-vector products on ``D_h``."""

    differentiates_inner_loop: ClassVar[bool] = True
    supports_step_weights: ClassVar[bool] = True
    theory_step_constant: ClassVar[float | None] = 1 / 12
    hessian_set: ClassVar[str] = "required"

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        if "hessian_x" not in task:
            raise ConfigError(
                "estimator 'three_batch' takes the Hessian on an independent set D_h but the batch has none: give "
                "TaskBatch hessian_x/hessian_y (in a config: hessian_size), or use estimator 'unrolled'"
            )
        return reverse_mode_estimate(problem, meta, task, exact_curvature)


def exact_curvature(loss: ScalarFunction, point: Params, adjoint: Params, vector: Params) -> Params:
    """``H(point) vector`` by double backward (the adjoint is not needed)."""
    return hessian_vector_product(loss, point, vector)


def reverse_mode_estimate(
    problem: InnerProblem, meta: MetaParams, task: Task, curvature: Curvature
) -> tuple[MetaParams, Metrics]:
    """``prod_s (I - alpha_s H(w_s; D_h)) grad f(w_K; D_o)`` with ``H(w_s; D_h) u`` given by ``curvature``.

    Returns the gradients of ``meta["params"]`` and ``meta["lrs"]`` and the query losses at ``w_0``
    and ``w_K``.
    """
    hessian_x, hessian_y = task.get("hessian_x", task["support_x"]), task.get("hessian_y", task["support_y"])

    def support_loss(params: Params) -> torch.Tensor:
        return problem.loss(params, task["support_x"], task["support_y"])

    def query_loss(params: Params) -> torch.Tensor:
        return problem.loss(params, task["query_x"], task["query_y"])

    def hessian_loss(params: Params) -> torch.Tensor:
        return problem.loss(params, hessian_x, hessian_y)

    start = {name: p.detach() for name, p in meta["params"].items()}
    adapted = [name for name in start if problem.adapted is None or name in problem.adapted]
    rates = problem.rates(meta["lrs"])

    points, inner_grads = [start], []
    for step in range(problem.steps):
        inner_grad = partial_grad(support_loss, points[-1], adapted)
        inner_grads.append(inner_grad)
        fast = {name: points[-1][name] for name in adapted}
        points.append({**points[-1], **sgd_step(fast, inner_grad, step_lr(rates, step))})

    query_grad, loss_after = grad_and_value(query_loss)(points[-1])
    adjoint = scaled(query_weight(problem, problem.steps), query_grad)  # v_K
    lr_grads = {name: torch.zeros_like(t) for name, t in meta["lrs"].items()}
    for step in reversed(range(problem.steps)):  # adjoint = v_{s+1} on entry, v_s on exit
        fast_adjoint = {name: adjoint[name] for name in adapted}
        if meta["lrs"]:
            step_lr_grads = rate_gradient(problem.rates, meta["lrs"], step, inner_grads[step], fast_adjoint)
            lr_grads = {name: g + step_lr_grads[name] for name, g in lr_grads.items()}
        vector = {name: torch.zeros_like(p) for name, p in start.items()}
        vector.update(rate_times(step_lr(rates, step), fast_adjoint))
        curved = curvature(hessian_loss, points[step], fast_adjoint, vector)
        adjoint = {name: v - curved[name] for name, v in adjoint.items()}
        if query_weight(problem, step) != 0:  # MAML++ multi-step loss: f(w_s; D_o) also counts
            step_query_grad = scaled(query_weight(problem, step), grad(query_loss)(points[step]))
            adjoint = {name: v + step_query_grad[name] for name, v in adjoint.items()}

    metrics = {"loss_after": loss_after}
    if problem.track_loss_before:
        with torch.no_grad():
            metrics["loss_before"] = query_loss(start)
    return {"params": adjoint, "lrs": lr_grads}, metrics


def query_weight(problem: InnerProblem, step: int) -> float:
    """The weight ``gamma_step`` of ``f(w_step; D_o)`` in the meta-objective: MAML++'s step weight, else 1 for the
    last step and 0 for the others."""
    if problem.step_weights:
        return problem.step_weights[step - 1] if step > 0 else 0.0
    return 1.0 if step == problem.steps else 0.0


def rate_gradient(
    rates: Callable[[Params], InnerLR], lrs: Params, step: int, inner_grad: Params, adjoint: Params
) -> Params:
    """``<v_{s+1}, d w_{s+1} / d lrs>`` for ``w_{s+1} = w_s - alpha_s(lrs) ⊙ g_s`` with ``w_s``, ``g_s`` held fixed."""

    def step_objective(lrs: Params) -> torch.Tensor:
        return -dot(rate_times(step_lr(rates(lrs), step), inner_grad), adjoint)

    return grad(step_objective)(lrs)
