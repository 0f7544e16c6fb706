"""The inner loop as a pure function.

One inner step on a task with support set ``D_in = (x, y)`` is

    w_{s+1} = w_s - alpha_s * grad_w f(w_s; D_in),      f(w; D) = loss(model(w, x), y),

and ``inner_trajectory`` returns the whole trajectory ``[w_0 = w, w_1, ..., w_K]`` (the multi-step loss needs every
step). The steps are differentiable: composed with an outer ``torch.func.grad`` they give the exact
second-order MAML gradient. With ``first_order=True`` each inner gradient is detached, so
``d w_K / d w = I`` and the outer gradient is first-order MAML.

The model is evaluated in an explicit ``torchmaml.context.ExecutionContext``, at inner step ``s`` for step
``s``; the context's ``differentiation`` also says how the inner gradients are taken (``torch.func.grad``, or
``torch.autograd.grad`` for an outer ``torch.autograd.grad`` outside any ``torch.func`` transform).

An ``InnerUpdate`` replaces the gradient in the step by another direction computed from it,
``w_{s+1} = w_s - alpha_s * d(w_s, grad f(w_s; D_in))``: SVGD's kernel-smoothed scores for a particle ensemble
(``torchmaml.bayesian.SVGD``). ``None`` is plain gradient descent, ``d = grad f``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.func import grad
from torch.utils._pytree import tree_leaves

from torchmaml.context import VECTORISED, ExecutionContext
from torchmaml.functional import FunctionalModel, Params

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A learning rate: one number, or one per parameter tensor (a scalar or a tensor shaped like it).
StepLR = float | torch.Tensor | Mapping[str, float | torch.Tensor]
# Either one learning rate for every step, or a sequence with one entry per step.
InnerLR = StepLR | Sequence[StepLR]


class InnerUpdate(Protocol):
    """``d(params, grads, examples)``: the direction of the inner step ``w - alpha * d`` from the adapted
    parameters, their gradients and the number of support examples (module docstring)."""

    def __call__(self, params: Params, grads: Params, examples: int) -> Params: ...


def example_count(x: Any) -> int:
    """The number of examples in one task's inputs ``x`` (a tensor or a pytree of tensors: the leading axis)."""
    return tree_leaves(x)[0].shape[0]


def step_lr(lr: InnerLR, step: int) -> StepLR:
    """The learning rate of inner step ``step`` (0-based)."""
    if isinstance(lr, Sequence):
        return lr[step]
    return lr


def sgd_step(params: Params, grads: Params, lr: StepLR) -> Params:
    """``w - alpha * g`` for the parameters in ``params``, with ``alpha`` global or per parameter."""
    if isinstance(lr, Mapping):
        return {name: p - lr[name] * grads[name] for name, p in params.items()}
    return {name: p - lr * grads[name] for name, p in params.items()}


def inner_trajectory(
    model: FunctionalModel,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    lr: InnerLR,
    steps: int,
    *,
    first_order: bool = False,
    adapted: Collection[str] | None = None,
    context: ExecutionContext = VECTORISED,
    update: InnerUpdate | None = None,
) -> list[Params]:
    """Run ``steps`` inner gradient steps from ``params`` on one task's ``(x, y)``.

    Returns ``[w_0, ..., w_steps]``; step ``s`` evaluates the model in ``context`` at inner step ``s``
    (per-step layers). Only the parameters named in ``adapted`` take inner steps (all when ``None``; ANIL
    adapts only the head); the others are passed through as the very same tensors. Works inside
    ``torch.func.vmap`` (one task per call) and under an outer ``torch.func.grad``; in a context differentiated
    by ``"autograd"`` the inner gradients are ``torch.autograd.grad`` calls instead, for an outer
    ``torch.autograd.grad`` outside any ``torch.func`` transform. ``update``: the step's direction
    (``InnerUpdate``; ``None``: the gradient).
    """
    trajectory = [params]
    for step in range(steps):
        trajectory.append(
            inner_step(
                model,
                trajectory[-1],
                x,
                y,
                loss_fn,
                step_lr(lr, step),
                step,
                first_order=first_order,
                adapted=adapted,
                context=context,
                update=update,
            )
        )
    return trajectory


def inner_step(
    model: FunctionalModel,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    lr: StepLR,
    step: int,
    *,
    first_order: bool = False,
    adapted: Collection[str] | None = None,
    context: ExecutionContext = VECTORISED,
    update: InnerUpdate | None = None,
) -> Params:
    """Inner step number ``step`` (0-based; the model runs in ``context`` at that step):
    ``w - lr * grad f(w; (x, y))`` on the parameters in ``adapted`` (all when ``None``), the others passed
    through unchanged. The gradient is ``torch.func.grad``'s, or in a context differentiated by ``"autograd"``
    ``torch.autograd.grad``'s (with a graph unless ``first_order``). With an ``update`` the step is
    ``w - lr * update(w, grad f, N)`` (computed at the detached point when ``first_order``)."""
    names = [name for name in params if adapted is None or name in adapted]
    fast = {name: params[name] for name in names}
    fixed = {name: p for name, p in params.items() if name not in fast}
    at_step = context.at_step(step)

    def support_loss(fast: Params, fixed: Params) -> torch.Tensor:
        return loss_fn(model({**fixed, **fast}, x, at_step), y)

    if context.differentiation == "autograd":
        support = support_loss(fast, fixed)
        values = torch.autograd.grad(support, list(fast.values()), create_graph=not first_order, materialize_grads=True)
        grads = dict(zip(fast, values, strict=True))
    elif first_order:  # the gradient at a detached point carries no graph back to w
        grads = grad(support_loss)(_detached(fast), _detached(fixed))
    else:
        grads = grad(support_loss)(fast, fixed)
    if update is not None:
        grads = update(_detached(fast) if first_order else fast, grads, example_count(x))
    return {**params, **sgd_step(fast, grads, lr)}


def _detached(params: Params) -> Params:
    return {name: p.detach() for name, p in params.items()}
