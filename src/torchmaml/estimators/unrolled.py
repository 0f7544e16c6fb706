"""Exact second-order MAML (Finn et al. 2017) and first-order MAML, by differentiating the unrolled inner loop.

For task ``i`` with support set ``D_in`` and query set ``D_o`` the meta-loss is
``L_i(w) = f_i(w_K(w); D_o)`` with ``w_K`` the result of ``K`` inner steps. Its exact gradient is

    G_i = prod_{s=K-1..0} (I - alpha_s H_i(w_s; D_in)) grad f_i(w_K; D_o),

which ``torch.func.grad`` computes by differentiating through the inner steps (Hessian-vector products
by double backward, never a formed Hessian). Memory grows linearly with ``K``: every step's activations
and their gradients stay alive until the outer backward pass.

``checkpoint=True`` trades time for memory (gradient checkpointing of the inner loop): the forward pass
keeps only the points ``w_0..w_K`` (no graph), then the backward pass walks the steps in reverse,
recomputing each step ``w_{s+1} = w_s - alpha_s grad f_i(w_s; D_in)`` and pulling the cotangent back
through it with one vector-Jacobian product,

    v_K = grad f_i(w_K; D_o),    v_s = v_{s+1} - alpha_s H_i(w_s; D_in) v_{s+1}    (+ v_s f_i(w_s; D_o)'s
    gradient under the multi-step loss),  G_i = v_0,

and the learned rates' gradients from the same products. The result is the same exact gradient; peak memory
holds one step's graph instead of ``K``; the cost is one more forward and backward pass per step.

With MAML++'s multi-step loss (``problem.step_weights``) the differentiated objective is
``sum_s v_s f_i(w_s; D_o)`` over the steps ``s = 1..K``; ``loss_after`` still reports ``f_i(w_K; D_o)``.

First-order MAML drops the Hessian terms, ``G_i = grad f_i(w_K; D_o)``: the inner gradients are
computed at detached points, so no graph is kept through the inner loop.

Where tasks run one at a time (the ``"loop"`` strategy: the problem's context is not ``vectorised``) and
nothing is being compiled, the same gradient is taken with plain ``torch.autograd`` instead of ``torch.func``
transforms (the model is evaluated in the context differentiated by ``"autograd"``): there, custom
``autograd.Function`` layers are cheap, whereas each call under a ``torch.func`` transform pays for its
wrapping, so conv4's batch norm and convolution can use their own double backwards
(``torchmaml.models.batch_norm``, ``torchmaml.models.convolution``), which makes a conv4 task faster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import grad, vjp

from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task


@dataclass(frozen=True)
class Unrolled(Estimator):
    """Exact second-order MAML gradient of one task (see the module docstring)."""

    differentiates_inner_loop: ClassVar[bool] = True
    supports_step_weights: ClassVar[bool] = True
    supports_per_step_layers: ClassVar[bool] = True
    supports_inner_update: ClassVar[bool] = True
    theory_step_constant: ClassVar[float | None] = 1 / 12

    first_order: ClassVar[bool] = False
    checkpoint: bool = False

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        if self.checkpoint and not self.first_order:
            return _checkpointed(problem, meta, task)
        autograd = not problem.context.vectorised and not torch.compiler.is_compiling()
        differentiated = problem.in_context(problem.context.differentiated_by("autograd")) if autograd else problem

        def meta_loss(meta: MetaParams) -> tuple[torch.Tensor, torch.Tensor]:
            trajectory = differentiated.trajectory(
                meta, task["support_x"], task["support_y"], first_order=self.first_order
            )
            loss_after = differentiated.loss(trajectory[-1], task["query_x"], task["query_y"])
            if problem.step_weights is None:
                return loss_after, loss_after.detach()
            weighted = sum(
                weight * differentiated.loss(params, task["query_x"], task["query_y"], step)
                for step, (weight, params) in enumerate(zip(problem.step_weights, trajectory[1:], strict=True), 1)
            )
            return weighted, loss_after.detach()

        if autograd:
            grads, loss_after = _autograd_grad(meta_loss, meta)
        else:
            grads, loss_after = grad(meta_loss, has_aux=True)(meta)
        metrics = {"loss_after": loss_after}
        if problem.track_loss_before:
            with torch.no_grad():
                metrics["loss_before"] = problem.loss(meta["params"], task["query_x"], task["query_y"], step=0)
        return grads, metrics


@dataclass(frozen=True)
class FirstOrder(Unrolled):
    """First-order MAML gradient of one task: the query gradient at the adapted point."""

    theory_step_constant: ClassVar[float | None] = 1 / 18

    first_order: ClassVar[bool] = True


def _autograd_grad(
    meta_loss: Callable[[MetaParams], tuple[torch.Tensor, torch.Tensor]], meta: MetaParams
) -> tuple[MetaParams, torch.Tensor]:
    """``torch.func.grad(meta_loss, has_aux=True)(meta)`` computed with ``torch.autograd`` (one task, no
    enclosing ``torch.func`` transform): leaves that require grad, then one ``torch.autograd.grad``."""
    leaves = {key: {name: t.detach().requires_grad_() for name, t in tree.items()} for key, tree in meta.items()}
    flat = [t for tree in leaves.values() for t in tree.values()]
    with torch.enable_grad():
        objective, aux = meta_loss(leaves)
        values = iter(torch.autograd.grad(objective, flat, materialize_grads=True))
    return {key: {name: next(values) for name in tree} for key, tree in leaves.items()}, aux


def _checkpointed(problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
    """The exact gradient of ``Unrolled`` by reverse recomputation of the inner steps (``checkpoint=True``)."""
    x, y, query_x, query_y = task["support_x"], task["support_y"], task["query_x"], task["query_y"]
    meta = {key: {name: t.detach() for name, t in tree.items()} for key, tree in meta.items()}
    metrics = {}
    with torch.no_grad():
        trajectory = problem.trajectory(meta, x, y)
        if problem.track_loss_before:
            metrics["loss_before"] = problem.loss(meta["params"], query_x, query_y, step=0)

    def query_loss(params, step: int | None) -> torch.Tensor:
        return problem.loss(params, query_x, query_y, step)

    weights = problem.step_weights or (0.0,) * (problem.steps - 1) + (1.0,)
    last = problem.steps
    final_step = None if problem.step_weights is None else last  # as in Unrolled: the final loss at step None
    cotangent = {name: weights[-1] * g for name, g in grad(query_loss)(trajectory[last], final_step).items()}
    with torch.no_grad():
        loss_after = query_loss(trajectory[last], None)
    lr_grads = {name: torch.zeros_like(t) for name, t in meta["lrs"].items()}
    for step in reversed(range(last)):
        _, pull_back = vjp(
            lambda params, lrs, s=step: problem.step(params, lrs, x, y, s), trajectory[step], meta["lrs"]
        )
        cotangent, lr_cotangent = pull_back(cotangent)
        lr_grads = {name: g + lr_cotangent[name] for name, g in lr_grads.items()}
        if step > 0 and weights[step - 1]:
            extra = grad(query_loss)(trajectory[step], step)
            cotangent = {name: g + weights[step - 1] * extra[name] for name, g in cotangent.items()}
    return {"params": cotangent, "lrs": lr_grads}, {**metrics, "loss_after": loss_after}
