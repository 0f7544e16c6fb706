"""Training-mode batch norm (statistics of the current batch) with a double backward of its own.

Second-order MAML differentiates the support set's backward pass: every batch norm's backward is
differentiated once more (the Hessian-vector product). torch's fused kernels are fast for the forward and
backward passes, but its batch-norm double backward is assembled from ~90 small tensor operations per call:
about half the time of conv4's Hessian-vector products (``benchmarks/README.md``). Here the forward and
backward passes are torch's fused kernels and the double backward is the closed form below (~30 tensor
operations). Use it outside ``torch.func`` transforms: under them every ``autograd.Function`` call costs
~1 ms of wrapping, more than it saves (``estimators.unrolled`` calls it under plain autograd).

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
the statistics from ``x`` with differentiable operations; otherwise it reuses the forward pass's. Checked
against torch's own double backward and by ``gradgradcheck`` in ``tests/test_batch_norm.py``.
"""

from __future__ import annotations

from typing import Any

import torch

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
        ctx.save_for_backward(grad_y, x, weight, mean, invstd)
        ctx.eps = eps

    @staticmethod
    def backward(ctx: Any, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple:
        g, x, weight, mean, s = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        if torch.is_grad_enabled():  # differentiated once more: the statistics as functions of x
            var, mean = torch.var_mean(x, dim=_REDUCE, keepdim=True, correction=0)
            s = torch.rsqrt(var + ctx.eps)
        else:  # the forward pass's, saved
            mean, s = mean.view(1, -1, 1, 1), s.view(1, -1, 1, 1)
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
        return grad_g, grad_x, (s * r).view(-1), None, None, None
