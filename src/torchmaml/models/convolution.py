"""2-D convolution with a double backward made of torch's fast convolution kernels.

Second-order MAML differentiates each convolution's backward pass once more (the Hessian-vector product).
torch's convolution double backward computes the weight-gradient term as a convolution of the batch-transposed
input (``[C, N, H, W]`` with an ``H x W`` kernel) in a layout oneDNN handles slowly on CPU: several times the
cost of the block's forward convolution (``benchmarks/README.md``). Here the forward and backward passes are
torch's kernels and the double backward is written with ``convolution`` and ``convolution_backward`` calls
only.

For ``y = conv(x, W) + b`` the backward pass maps the output gradient ``g`` to
``g_x = conv_transpose(g, W)``, ``g_W = corr(x, g)``, ``g_b = sum(g)``, each linear in ``g``. With cotangents
``a`` (for ``g_x``), ``B`` (for ``g_W``), ``c`` (for ``g_b``) of ``P = <a, g_x> + <B, g_W> + <c, g_b>``:

    dP/dg = conv(a, W) + conv(x, B) + c      (the adjoints of g -> g_x, g -> g_W, g -> g_b)
    dP/dx = conv_transpose(g, B)             (g_W's dependence on x: the input gradient of conv(x, B))
    dP/dW = corr(a, g)                       (g_x's dependence on W: the weight gradient of conv(a, W))

which are ``convolution_backward``'s input and weight gradients with ``B`` resp. ``a`` in place of ``W``
resp. ``x``. All of them are differentiable torch operations, so third derivatives work too. Use it outside
``torch.func`` transforms (the exact estimator differentiating with plain autograd under ``"loop"``), where
``autograd.Function`` calls are cheap.
Checked against torch's own derivatives and by ``gradgradcheck`` in ``tests/test_convolution.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from torchmaml.models.layout import layout_of


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` (zero padding given as numbers) with the
    double backward of the module docstring; any order of derivatives. Not for use under ``vmap``."""
    return _Conv2d.apply(x, weight, bias, (tuple(stride), tuple(padding), tuple(dilation), groups))


Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]


def _convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: Geometry) -> torch.Tensor:
    stride, padding, dilation, groups = geometry
    return torch.convolution(x, weight, bias, stride, padding, dilation, False, (0, 0), groups)


def _convolution_backward(
    grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, mask: tuple[bool, bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """torch's ``(g_x, g_W, g_b)`` for the output gradient ``grad_y``, computing only those in ``mask``."""
    stride, padding, dilation, groups = geometry
    bias_sizes = [weight.shape[0]] if mask[2] else None
    outputs = torch.ops.aten.convolution_backward(
        grad_y, x, weight, bias_sizes, stride, padding, dilation, False, (0, 0), groups, list(mask)
    )
    return tuple(t if wanted else None for t, wanted in zip(outputs, mask, strict=True))


class _Conv2d(torch.autograd.Function):
    """torch's forward convolution; the backward is :class:`_Conv2dBackward`."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: Geometry) -> Any:
        return _convolve(x, weight, bias, geometry)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        x, weight, bias, geometry = inputs
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        grad_y = grad_y.contiguous(memory_format=layout_of(x))
        return (*_Conv2dBackward.apply(grad_y, x, weight, ctx.geometry, mask), None)


class _Conv2dBackward(torch.autograd.Function):
    """torch's convolution backward kernels; its own backward is the module docstring's."""

    @staticmethod
    def forward(
        grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, mask: tuple[bool, bool, bool]
    ) -> Any:
        return _convolution_backward(grad_y, x, weight, geometry, mask)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        grad_y, x, weight, geometry, _ = inputs
        ctx.save_for_backward(grad_y, x, weight)
        ctx.geometry = geometry
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, a: torch.Tensor | None, b: torch.Tensor | None, c: torch.Tensor | None) -> tuple:
        g, x, weight = ctx.saved_tensors
        geometry = ctx.geometry
        needs_g, needs_x, needs_weight = ctx.needs_input_grad[:3]
        if a is not None:
            a = a.contiguous(memory_format=layout_of(x))
        grad_g = grad_x = grad_weight = None
        if needs_g and (a is not None or b is not None or c is not None):
            if b is not None:
                grad_g = _convolve(x, b, c, geometry)
            elif c is not None:
                grad_g = c.view(1, -1, 1, 1).expand(g.shape)
            if a is not None:
                from_a = _convolve(a, weight, None, geometry)
                grad_g = from_a if grad_g is None else grad_g + from_a
        if needs_x and b is not None:
            grad_x = _convolution_backward(g, x, b, geometry, (True, False, False))[0]
        if needs_weight and a is not None:
            grad_weight = _convolution_backward(g, a, weight, geometry, (False, True, False))[1]
        return grad_g, grad_x, grad_weight, None, None
