"""Exact second-order MAML (Finn et al. 2017) and first-order MAML, by differentiating the unrolled inner loop.

For task ``i`` with support set ``D_in`` and query set ``D_o`` the meta-loss is
``L_i(w) = f_i(w_K(w); D_o)`` with ``w_K`` the result of ``K`` inner steps. Its exact gradient is

    G_i = prod_{s=K-1..0} (I - alpha_s H_i(w_s; D_in)) grad f_i(w_K; D_o),

which ``torch.func.grad`` computes by differentiating through the inner steps (Hessian-vector products
by double backward, never a formed Hessian). Memory grows linearly with ``K``.

With MAML++'s multi-step loss (``problem.step_weights``) the differentiated objective is
``sum_s v_s f_i(w_s; D_o)`` over the steps ``s = 1..K``; ``loss_after`` still reports ``f_i(w_K; D_o)``.

First-order MAML drops the Hessian terms, ``G_i = grad f_i(w_K; D_o)``: the inner gradients are
computed at detached points, so no graph is kept through the inner loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import grad

from torchmaml.estimators.base import InnerProblem, MetaParams, Metrics, Task


@dataclass(frozen=True)
class Unrolled:
    """Exact second-order MAML gradient of one task (see the module docstring)."""

    first_order: ClassVar[bool] = False

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        def meta_loss(meta: MetaParams) -> tuple[torch.Tensor, torch.Tensor]:
            trajectory = problem.adapt(meta, task["support_x"], task["support_y"], self.first_order)
            loss_after = problem.loss(trajectory[-1], task["query_x"], task["query_y"])
            if problem.step_weights is None:
                return loss_after, loss_after.detach()
            weighted = sum(
                weight * problem.loss(params, task["query_x"], task["query_y"], step)
                for step, (weight, params) in enumerate(zip(problem.step_weights, trajectory[1:], strict=True), 1)
            )
            return weighted, loss_after.detach()

        grads, loss_after = grad(meta_loss, has_aux=True)(meta)
        with torch.no_grad():
            loss_before = problem.loss(meta["params"], task["query_x"], task["query_y"], step=0)
        return grads, {"loss_before": loss_before, "loss_after": loss_after}


@dataclass(frozen=True)
class FirstOrder(Unrolled):
    """First-order MAML gradient of one task: the query gradient at the adapted point."""

    first_order: ClassVar[bool] = True
