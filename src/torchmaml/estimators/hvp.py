"""Hessian-vector products, and the little vector algebra on parameter dictionaries they need.

The estimators that use curvature never form a Hessian; they only apply it to a vector ``u``:

- exactly, ``H(w) u = d/dw <grad f(w), u>``: the vector-Jacobian product of ``grad f`` (reverse over
  reverse, "double backward"), about the cost of two gradients;
- or by a central difference of two gradients, first-order autograd only (HF-MAML):

      H(w) u  ~=  [grad f(w + h u) - grad f(w - h u)] / (2 h),

  exact for a quadratic ``f``, with error ``O(h^2)`` for a smooth one (see ``hessian_free`` for ReLU nets);
- or the Gauss-Newton matrix ``G(w) = J^T H_l J`` in place of ``H`` (``J`` the Jacobian of the model's output
  in ``w``, ``H_l`` the Hessian of the loss in the output): positive semi-definite whenever the loss is convex
  in the output (MSE, cross-entropy), equal to ``H`` for a linear model; ``J u``, one loss Hessian-vector
  product and one vjp (iMAML's ``curvature = "gauss_newton"``).

``J u`` itself needs no forward-mode pass: it is the transpose of the recorded linear map ``c -> J^T c``
(:func:`jacobian_product_of`), reverse over reverse through the graph of one forward pass.

Vectors are parameter dictionaries ``{name: tensor}``; everything here works under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.func import grad, vjp
from torch.utils._pytree import tree_map

from torchmaml.functional import Params
from torchmaml.inner import StepLR
from torchmaml.linalg import dot as dot  # re-exported: the vector algebra's inner product

ScalarFunction = Callable[[Params], torch.Tensor]


def hessian_vector_product(loss: ScalarFunction, point: Params, vector: Params) -> Params:
    """``H(point) vector`` with ``H`` the Hessian of ``loss``: the vjp of ``grad loss`` at ``point``."""
    _, grad_vjp = vjp(grad(loss), point)
    return grad_vjp(vector)[0]


def jacobian_product_of(pullback: Callable[[Any], tuple[Any, ...]], outputs: Any) -> Callable[[Any], Any]:
    """``u -> J u`` from the recorded ``pullback = c -> (J^T c,)`` of a function with outputs ``outputs`` (a tensor
    or a tuple of them) at some point: the vjp of the linear map ``c -> J^T c`` (at ``c = 0``; any ``c`` gives
    the same map), so the function's forward pass is not run again and no forward-mode pass is needed."""
    zeros = tree_map(torch.zeros_like, outputs)
    _, transpose = vjp(lambda cotangent: pullback(cotangent)[0], zeros)
    return lambda vector: transpose(vector)[0]


def gauss_newton_operator(
    output: Callable[[Params], torch.Tensor],
    loss: Callable[[torch.Tensor], torch.Tensor],
    point: Params,
) -> Callable[[Params], Params]:
    """``u -> J^T H_l J u``: ``J`` the Jacobian of ``output`` at ``point``, ``H_l`` the Hessian of ``loss`` (a
    function of the output) at ``output(point)``.

    The model runs forward once, when the operator is built; each product is then three linear maps through
    the recorded graph: ``J u`` as the transpose of the linear map ``c -> J^T c`` (reverse over reverse, so no
    forward-mode pass), ``H_l`` on the output, and ``J^T``.
    """
    prediction, output_vjp = vjp(output, point)
    _, loss_hessian = vjp(grad(loss), prediction)
    jacobian = jacobian_product_of(output_vjp, prediction)

    def product(vector: Params) -> Params:
        (curved,) = loss_hessian(jacobian(vector))
        return output_vjp(curved)[0]

    return product


def partial_grad(loss: ScalarFunction, point: Params, names: list[str]) -> Params:
    """The gradient of ``loss`` at ``point`` with respect to the entries ``names`` only (the others held fixed)."""
    return grad(lambda fast: loss({**point, **fast}))({name: point[name] for name in names})


def finite_difference_hvp(loss: ScalarFunction, point: Params, vector: Params, step: torch.Tensor) -> Params:
    """``[grad loss(point + h u) - grad loss(point - h u)] / (2 h)``, with ``u = vector`` and ``h = step``."""
    forward = grad(loss)({name: p + step * vector[name] for name, p in point.items()})
    backward = grad(loss)({name: p - step * vector[name] for name, p in point.items()})
    return {name: (forward[name] - backward[name]) / (2 * step) for name in point}


def rate_times(lr: StepLR, vector: Params) -> Params:
    """``alpha ⊙ v`` for every entry of ``vector``, with ``alpha`` global or per parameter (as ``sgd_step``)."""
    if isinstance(lr, Mapping):
        return {name: lr[name] * v for name, v in vector.items()}
    return {name: lr * v for name, v in vector.items()}


def scaled(factor: float | torch.Tensor, vector: Params) -> Params:
    """``c v``."""
    return {name: factor * v for name, v in vector.items()}


def norm(a: Params) -> torch.Tensor:
    """The Euclidean norm of all entries of ``a`` taken together."""
    return torch.stack([a_i.square().sum() for a_i in a.values()]).sum().sqrt()
