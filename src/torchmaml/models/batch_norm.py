"""Training-mode batch norm (statistics of the current batch) with a double backward of its own.

Second-order MAML differentiates the support set's backward pass: every batch norm's backward is
differentiated once more (the Hessian-vector product). torch's fused kernels are fast for the forward and
backward passes, but its batch-norm double backward is assembled from ~90 small tensor operations per call,
a large share of conv4's Hessian-vector products (``benchmarks/README.md``). Here the forward and backward
passes are torch's fused kernels and the double backward is the closed form below, evaluated in about 9 passes
over memory (``_double_backward``). Use it outside ``torch.func`` transforms: under them every
``autograd.Function`` call pays for its wrapping, more than it saves (``estimators.unrolled`` calls it under
plain autograd).

Notation, per channel over its ``M`` values (batch and spatial axes): ``mu = mean(x)``,
``s = (mean((x - mu)^2) + eps)^(-1/2)``, ``xh = (x - mu) s``, ``y = gamma xh + beta``. The backward pass maps
the output gradient ``g`` to

    g_beta = sum(g),   g_gamma = sum(g xh),   g_x = gamma s (g - mean(g) - xh mean(g xh)).

The double backward takes cotangents ``a`` (for ``g_x``), ``b`` (for ``g_gamma``), ``c`` (for ``g_beta``) of
``P = <a, g_x> + b g_gamma + c g_beta`` and returns its gradients:

    dP/dg     = gamma s (a - mean(a) - xh mean(a xh)) + b xh + c
    dP/dgamma = s R,    R = sum(a g) - sum(a) sum(g) / M - sum(g xh) sum(a xh) / M
    dP/dx     = s (u - mean(u) - xh mean(u xh)) - (gamma R s^2 / M) xh,
                u = -(gamma s / M) (g sum(a xh) + a sum(g xh)) + b g

(``u`` is ``P``'s partial derivative in ``xh`` at fixed ``s``; the last term is its partial in ``s``, and
``d s / d x = -s^2 xh / M``). When the double backward is itself differentiated (third order) it recomputes
the statistics from ``x`` with differentiable operations; otherwise it reuses the forward pass's. The incoming
gradients are put in ``x``'s memory format first (``layout.layout_of``). Checked
against torch's own double backward and by ``gradgradcheck`` in ``tests/test_batch_norm.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from torchmaml.models.layout import layout_of

_REDUCE = (0, 2, 3)


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over axes 0, 2, 3 of ``x`` ``[N, C, H, W]`` (biased
    variance of the current batch, nothing stored); any order of derivatives. Not for use under ``vmap``."""
    return _BatchNorm.apply(x, weight, bias, eps)[0]


class _BatchNorm(torch.autograd.Function):
    """torch's fused forward; the backward is :class:`_BatchNormBackward`."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> Any:
        return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, _, eps = inputs
        _, mean, invstd = output
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, invstd)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor, _mean: Any, _invstd: Any) -> tuple:
        x, weight, mean, invstd = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=layout_of(x))
        grad_x, grad_weight, grad_bias = _BatchNormBackward.apply(grad_y, x, weight, mean, invstd, ctx.eps)
        return grad_x, grad_weight, grad_bias, None


class _BatchNormBackward(torch.autograd.Function):
    """torch's fused backward kernel; its own backward is the closed form of the module docstring."""

    @staticmethod
    def forward(
        grad_y: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        mean: torch.Tensor,
        invstd: torch.Tensor,
        eps: float,
    ) -> Any:
        return torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        grad_y, x, weight, mean, invstd, eps = inputs
        _, grad_weight, grad_bias = output
        ctx.save_for_backward(grad_y, x, weight, mean, invstd, grad_weight, grad_bias)
        ctx.eps = eps

    @staticmethod
    def backward(ctx: Any, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple:
        g, x, weight, mean, s, sum_gxh, sum_g = ctx.saved_tensors
        if torch.is_grad_enabled():  # differentiated once more: the statistics as functions of x
            grad_g, grad_x, grad_weight = _double_backward_differentiable(a, b, c, g, x, weight, ctx.eps)
        else:
            grad_g, grad_x, grad_weight = _double_backward(a, b, c, g, x, weight, mean, s, sum_gxh, sum_g, ctx.eps)
        return grad_g, grad_x, grad_weight, None, None, None


def _double_backward(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    g: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    s: torch.Tensor,
    sum_gxh: torch.Tensor,
    sum_g: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The module docstring's closed form in few passes over memory, with the forward pass's statistics.

    Every large output is a per-channel linear combination of ``a``, ``g`` and ``xc = x - mu``:
    ``dP/dg = gamma s a + (b - gamma s S_axh / M) s xc + (c - gamma s S_a / M)`` and
    ``dP/dx = s u + V s xc - s S_u / M`` with ``u = U_g g + U_a a``, ``U_g = b - gamma s S_axh / M``,
    ``U_a = -gamma s S_gxh / M``, ``S_u = U_g S_g + U_a S_a``, ``S_uxh = U_g S_gxh + U_a S_axh`` and
    ``V = -(s S_uxh + gamma R s^2) / M``; so ``u`` is never formed. The per-channel sums ``S_a``, ``S_axh``
    come from one fused batch-norm backward call, ``S_g``, ``S_gxh`` are the backward pass's own
    outputs; only ``sum(a g)`` takes a product. About 9 passes instead of ~30."""
    count = x.numel() // x.shape[1]
    a = a.contiguous(memory_format=layout_of(x))
    _, sum_axh, sum_a = torch.ops.aten.native_batch_norm_backward(
        a, x, weight, None, None, mean, s, True, eps, [False, True, True]
    )
    sum_ag = (a * g).sum(_REDUCE)
    r = sum_ag - (sum_a * sum_g + sum_gxh * sum_axh) / count
    gs = weight * s
    u_g = b - gs * sum_axh / count
    u_a = -gs * sum_gxh / count
    sum_u, sum_uxh = u_g * sum_g + u_a * sum_a, u_g * sum_gxh + u_a * sum_axh
    v = -(s * sum_uxh + weight * r * s * s) / count

    def channel(t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    xc = x - channel(mean)
    grad_g = torch.addcmul(channel(c - gs * sum_a / count), channel(u_g * s), xc).addcmul_(channel(gs), a)
    grad_x = torch.addcmul(channel(-s * sum_u / count), channel(v * s), xc)
    grad_x = grad_x.addcmul_(channel(s * u_g), g).addcmul_(channel(s * u_a), a)
    return grad_g, grad_x, s * r


def _double_backward_differentiable(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    g: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The module docstring's closed form, written term by term with differentiable operations and the
    statistics recomputed from ``x`` (for a third derivative)."""
    count = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x, dim=_REDUCE, keepdim=True, correction=0)
    s = torch.rsqrt(var + eps)
    gamma = weight.view(1, -1, 1, 1)
    b, c = b.view(1, -1, 1, 1), c.view(1, -1, 1, 1)
    xh = (x - mean) * s
    sum_a, sum_g = a.sum(_REDUCE, keepdim=True), g.sum(_REDUCE, keepdim=True)
    sum_axh, sum_gxh = (a * xh).sum(_REDUCE, keepdim=True), (g * xh).sum(_REDUCE, keepdim=True)
    r = (a * g).sum(_REDUCE, keepdim=True) - (sum_a * sum_g + sum_gxh * sum_axh) / count
    gs = gamma * s
    grad_g = gs * (a - sum_a / count - xh * (sum_axh / count)) + b * xh + c
    u = b * g - (gs / count) * (g * sum_axh + a * sum_gxh)
    sum_u, sum_uxh = u.sum(_REDUCE, keepdim=True), (u * xh).sum(_REDUCE, keepdim=True)
    grad_x = s * (u - sum_u / count - xh * (sum_uxh / count)) - (gamma * r * s * s / count) * xh
    return grad_g, grad_x, (s * r).view(-1)
