"""``models.convolution``: torch's convolution kernels with a double backward of their own, checked against
torch's own derivatives (an independent implementation) and by finite differences up to third order, in
float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from torchmaml.models.convolution import conv2d


def inputs(channels_last: bool, in_channels: int = 3, bias: bool = True):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, in_channels, 6, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, in_channels, 3, 3, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    return x, weight, torch.randn(5, generator=generator, dtype=torch.float64) if bias else None


def ours(stride):
    def fn(x, weight, bias):  # tanh: a loss with a non-trivial second derivative
        return torch.tanh(conv2d(x, weight, bias, (stride, stride), (1, 1), (1, 1), 1))

    return fn


def torchs(stride):
    def fn(x, weight, bias):
        return torch.tanh(F.conv2d(x, weight, bias, stride=stride, padding=1))

    return fn


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_needs_grad", [True, False])
def test_value_gradient_and_hessian_vector_products_equal_torchs(channels_last, stride, bias, input_needs_grad):
    x, weight, b = inputs(channels_last, bias=bias)
    leaves = [t.clone().requires_grad_() for t in (x, weight, b) if t is not None]
    if not input_needs_grad:
        leaves[0].requires_grad_(False)
    wrt = [t for t in leaves if t.requires_grad]
    args = leaves if bias else [*leaves, None]
    target = torch.randn(ours(stride)(*args).shape, dtype=torch.float64)
    cotangents = [torch.randn_like(t) for t in wrt]
    results = {}
    for name, fn in (("ours", ours(stride)), ("torch", torchs(stride))):
        value = fn(*args)
        first = torch.autograd.grad((value * target).sum(), wrt, create_graph=True)
        second = torch.autograd.grad(first, wrt, cotangents, allow_unused=True, materialize_grads=True)
        results[name] = (value, *first, *second)
    for got, expected in zip(results["ours"], results["torch"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_first_second_and_third_derivatives_match_finite_differences(channels_last):
    x, weight, bias = (t.clone().requires_grad_() for t in inputs(channels_last, in_channels=2))
    fn = ours(2)
    assert gradcheck(fn, (x, weight, bias))
    assert gradgradcheck(fn, (x, weight, bias))
    target = torch.randn(fn(x, weight, bias).shape, dtype=torch.float64)

    def gradient(x, weight, bias):
        return torch.autograd.grad((fn(x, weight, bias) * target).sum(), (x, weight, bias), create_graph=True)

    assert gradgradcheck(gradient, (x, weight, bias))  # the double backward is differentiable again


def test_a_gradient_in_another_layout_than_the_input_gives_the_same_products():
    x, weight, bias = (t.clone().requires_grad_() for t in inputs(channels_last=True))
    target = torch.randn(ours(1)(x, weight, bias).shape, dtype=torch.float64)  # NCHW, the input channels-last
    cotangents = [torch.randn_like(t) for t in (x, weight, bias)]
    products = []
    for fn in (ours(1), torchs(1)):
        first = torch.autograd.grad((fn(x, weight, bias) * target).sum(), (x, weight, bias), create_graph=True)
        products.append(torch.autograd.grad(first, (x, weight, bias), cotangents))
    for got, expected in zip(*products, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_conv4s_convolution_uses_it_exactly_under_plain_autograd():
    from torchmaml.context import ExecutionContext
    from torchmaml.models.conv4 import ChannelsLastConv2d
    from torchmaml.models.layers import in_context

    layer = ChannelsLastConv2d(3, 5, 3, padding=1).double()
    x = inputs(channels_last=True)[0]
    native = in_context(layer, ExecutionContext(vectorised=False))(x)
    plain_autograd = in_context(layer, ExecutionContext(vectorised=False, differentiation="autograd"))
    lean = plain_autograd(x)
    plain_autograd.padding_mode = "reflect"  # only zero padding has the lean double backward
    reflected = plain_autograd(x)
    assert type(lean.grad_fn).__name__.startswith("_Conv2d") and type(lean.grad_fn) is not type(native.grad_fn)
    assert type(reflected.grad_fn) is type(native.grad_fn)
    torch.testing.assert_close(lean, native, rtol=1e-12, atol=1e-12)


def test_differentiating_only_the_bias_gradient_again_equals_torch():
    """The double backward with a cotangent for the bias gradient alone (``a`` and ``B`` absent)."""
    x, weight, bias = (t.clone().requires_grad_() for t in inputs(channels_last=True))
    cotangent = torch.randn_like(bias)
    products = []
    for fn in (ours(1), torchs(1)):
        (bias_gradient,) = torch.autograd.grad(fn(x, weight, bias).square().sum(), (bias,), create_graph=True)
        products.append(torch.autograd.grad(bias_gradient, (x, weight, bias), cotangent))
    for got, expected in zip(*products, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
