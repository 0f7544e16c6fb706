"""``models.batch_norm``: torch's fused batch norm with a double backward of its own, checked against torch's
own derivatives (an independent implementation) and by finite differences up to third order, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, vjp

from torchmaml.models.batch_norm import batch_norm

EPS = 1e-5


def inputs(channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(3, generator=generator, dtype=torch.float64)
    bias = torch.randn(3, generator=generator, dtype=torch.float64)
    return x, weight, bias


def ours(x, weight, bias):
    return torch.tanh(batch_norm(x, weight, bias, EPS))  # tanh: a loss with a non-trivial second derivative


def torchs(x, weight, bias):
    return torch.tanh(F.batch_norm(x, None, None, weight, bias, training=True, eps=EPS))


@pytest.mark.parametrize("channels_last", [False, True])
def test_value_gradient_and_hessian_vector_products_equal_torchs(channels_last):
    x, weight, bias = inputs(channels_last)
    target = torch.randn_like(x)
    cotangents = tuple(torch.randn_like(t) for t in (x, weight, bias))
    results = {}
    for name, fn in (("ours", ours), ("torch", torchs)):

        def gradient(*args, fn=fn):
            return grad(lambda *a: (fn(*a) * target).sum(), argnums=(0, 1, 2))(*args)

        value = fn(x, weight, bias)
        first = gradient(x, weight, bias)
        _, pull_back = vjp(gradient, x, weight, bias)  # differentiates the backward pass: the double backward
        results[name] = (value, *first, *pull_back(cotangents))
    for got, expected in zip(results["ours"], results["torch"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_first_second_and_third_derivatives_match_finite_differences(channels_last):
    x, weight, bias = (t.clone().requires_grad_() for t in inputs(channels_last))
    target = torch.randn_like(x)
    assert gradcheck(ours, (x, weight, bias))
    assert gradgradcheck(ours, (x, weight, bias))

    def gradient(x, weight, bias):
        return torch.autograd.grad((ours(x, weight, bias) * target).sum(), (x, weight, bias), create_graph=True)

    assert gradgradcheck(gradient, (x, weight, bias))  # the double backward is differentiable again


def test_the_layer_uses_it_exactly_where_tasks_run_one_at_a_time_under_plain_autograd():
    from torchmaml.context import ExecutionContext
    from torchmaml.models import MetaBatchNorm2d
    from torchmaml.models.layers import in_context

    norm = MetaBatchNorm2d(3).double()
    x = inputs()[0]
    fused = in_context(norm, ExecutionContext(vectorised=False))(x)
    lean = in_context(norm, ExecutionContext(vectorised=False, differentiation="autograd"))(x)
    assert "BatchNorm" in type(lean.grad_fn).__name__ and type(lean.grad_fn) is not type(fused.grad_fn)
    torch.testing.assert_close(lean, fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "x_layout, target_layout",
    [("channels_last", "channels_last"), ("contiguous", "contiguous"), ("channels_last", "contiguous")],
)
def test_the_double_backward_with_saved_statistics_equals_torchs(x_layout, target_layout):
    """Not differentiated again (``create_graph=False``), the double backward reuses the forward statistics
    (its fast path), also when the incoming gradient's layout differs from the input's."""
    x, weight, bias = (t.clone().requires_grad_() for t in inputs(channels_last=x_layout == "channels_last"))
    layout = torch.channels_last if target_layout == "channels_last" else torch.contiguous_format
    target = torch.randn(x.shape, dtype=x.dtype).contiguous(memory_format=layout)
    cotangents = tuple(torch.randn_like(t) for t in (x, weight, bias))
    products = []
    for fn in (ours, torchs):
        first = torch.autograd.grad((fn(x, weight, bias) * target).sum(), (x, weight, bias), create_graph=True)
        products.append(torch.autograd.grad(first, (x, weight, bias), cotangents))
    for got, expected in zip(*products, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
