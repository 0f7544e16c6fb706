"""Shared fixtures and independent references for the tests.

The references here deliberately avoid torchmaml's own inner loop: they use plain
``torch.autograd.grad`` on a per-task Python loop, as a reader would write MAML by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

from torchmaml.models import MetaBatchNorm2d

# The Omniglot copy the project keeps beside the repository (../shared/data/omniglot), or $TORCHMAML_OMNIGLOT.
OMNIGLOT_COPY = Path(
    os.environ.get("TORCHMAML_OMNIGLOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot")
)


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory):
    """The real Omniglot decoded once per test session into a fresh cache folder: ``(data, cache folder, build
    seconds)``; the tests that train on Omniglot read that cache instead of decoding again."""
    import time

    from torchmaml.data.omniglot import load_omniglot

    if not (OMNIGLOT_COPY / "images_background.zip").exists() and not (OMNIGLOT_COPY / "images_background").exists():
        pytest.skip(f"no Omniglot copy at {OMNIGLOT_COPY}")
    cache_dir = tmp_path_factory.mktemp("omniglot-cache")
    start = time.perf_counter()
    data = load_omniglot(OMNIGLOT_COPY, cache_dir=cache_dir)
    return data, cache_dir, time.perf_counter() - start


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def naive_meta_loss(model, loss_fn, params, batch, lr, steps, create_graph=True, first_order=False):
    """``(1/B) sum_i loss(f(query_x_i; w_K^i), query_y_i)`` with ``w_K^i`` from ``steps`` SGD steps."""
    names = [n for n, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = list(params)
        for _ in range(steps):
            out = functional_call(model, (dict(zip(names, fast, strict=True)), buffers), (batch.support_x[i],))
            grads = torch.autograd.grad(
                loss_fn(out, batch.support_y[i]), fast, create_graph=create_graph and not first_order
            )
            fast = [p - lr * g for p, g in zip(fast, grads, strict=True)]
        out = functional_call(model, (dict(zip(names, fast, strict=True)), buffers), (batch.query_x[i],))
        total = total + loss_fn(out, batch.query_y[i])
    return total / batch.num_tasks


def naive_meta_gradient(model, loss_fn, batch, lr, steps, first_order=False) -> torch.Tensor:
    """The meta-gradient by autograd through a per-task loop, flattened."""
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    value = naive_meta_loss(model, loss_fn, params, batch, lr, steps, first_order=first_order)
    return flat(torch.autograd.grad(value, params))


def finite_difference_gradient(model, loss_fn, batch, lr, steps, eps=1e-6) -> torch.Tensor:
    """Central differences of the meta-loss, one coordinate at a time (float64 models)."""
    base = [p.detach().clone() for p in model.parameters()]
    flat_base = flat(base)
    gradient = torch.zeros_like(flat_base)

    def value_at(vector):
        params = [t.requires_grad_(True) for t in unflatten(vector, base)]
        with torch.enable_grad():
            return naive_meta_loss(model, loss_fn, params, batch, lr, steps, create_graph=False).item()

    for j in range(flat_base.numel()):
        step = torch.zeros_like(flat_base)
        step[j] = eps
        gradient[j] = (value_at(flat_base + step) - value_at(flat_base - step)) / (2 * eps)
    return gradient


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector, like):
    out, offset = [], 0
    for t in like:
        out.append(vector[offset : offset + t.numel()].view_as(t).clone())
        offset += t.numel()
    return out


# (MetaLearner options, multi-step loss weights for 3 inner steps) covering every learned-rate rule, ANIL
# (small_mlp's head is module "4") and the multi-step loss: estimators that must agree are compared on each.
INNER_LOOP_VARIANTS = [
    ({}, None),
    ({"inner_lr_mode": "scalar"}, None),
    ({"inner_lr_mode": "meta_sgd"}, None),
    ({"inner_lr_mode": "per_layer_per_step"}, None),
    ({"adapt_only": ["4"]}, None),
    ({}, (0.2, 0.3, 0.5)),
    ({"inner_lr_mode": "per_layer_per_step"}, (0.0, 0.4, 0.6)),
]


def small_mlp(dtype=torch.float64) -> nn.Module:
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)).to(dtype)


def small_convnet(ways=3, dtype=torch.float64, fused_batch_norm=False) -> nn.Module:
    norm = (lambda c: nn.BatchNorm2d(c)) if fused_batch_norm else MetaBatchNorm2d
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        norm(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 3, 3, padding=1),
        norm(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, ways),
    ).to(dtype)
