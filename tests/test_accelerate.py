"""``accelerate(net)``: a user's plain conv net on conv4's fast path has exactly the meta-gradient of the original
(with training-mode batch statistics), under both strategies and both orders, and leaves the original alone.

The reference is written here, independent of torchmaml: per task, ``torch.autograd.grad(create_graph=True)``
inner steps on the ORIGINAL module through ``torch.func.functional_call`` (a train-mode copy, so that every batch
norm uses the statistics of its batch), then the query loss's gradient, in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from torchmaml import MetaLearner, TaskBatch
from torchmaml.context import ExecutionContext
from torchmaml.models.accelerate import accelerate
from torchmaml.models.layers import ChannelsLastConv2d, TransductiveBatchNorm2d, in_context

WAYS, INNER_LR = 3, 0.4


def blocks(image_channels: int = 1) -> nn.Module:
    """Three textbook blocks, conv -> batch norm -> ReLU -> max-pool, on 8x8 images."""
    layers: list[nn.Module] = []
    for index in range(3):
        layers += [nn.Conv2d(image_channels if index == 0 else 4, 4, 3, padding=1), nn.BatchNorm2d(4)]
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4, WAYS))


def mixed() -> nn.Module:
    """A strided conv without bias, batch norm without affine parameters, a grouped conv, ReLU then pooling
    with padding, and a batch norm that keeps no running statistics."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.BatchNorm2d(6, momentum=0.5, track_running_stats=False),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, WAYS),
    )


class Custom(nn.Module):
    """A module with a forward of its own (not a Sequential), in evaluation mode: accelerated, its batch norm
    uses batch statistics (the transductive policy)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, WAYS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.max_pool2d(F.relu(self.norm(self.conv(x))), 2).flatten(1))


NETS = {"blocks": (blocks, 1), "mixed": (mixed, 2), "custom_eval": (lambda: Custom().eval(), 1)}


def make_net(name: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    build, channels = NETS[name]
    net = build().double()
    with torch.no_grad():  # batch norm's affine parameters away from (1, 0), running statistics not (0, 1)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                if module.affine:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.5, 0.5)
                if module.track_running_stats:
                    module.running_mean.uniform_(-1, 1)
                    module.running_var.uniform_(0.5, 2)
    return net, channels


def image_batch(channels: int, tasks: int = 2, size: int = 8) -> TaskBatch:
    generator = torch.Generator().manual_seed(1)

    def split(shots: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(tasks, WAYS * shots, channels, size, size, generator=generator, dtype=torch.float64)
        return images, torch.arange(WAYS).repeat_interleave(shots).expand(tasks, -1).clone()

    return TaskBatch(*split(2), *split(2))


def reference_meta_gradient(net: nn.Module, batch: TaskBatch, steps: int, first_order: bool) -> list[torch.Tensor]:
    """MAML by hand on a train-mode copy of the original module (training-mode batch statistics)."""
    model = copy.deepcopy(net).train()
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def loss(weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        return F.cross_entropy(functional_call(model, (dict(zip(names, weights, strict=True)), buffers), (x,)), y)

    total = 0.0
    for i in range(batch.num_tasks):
        fast = params
        for _ in range(steps):
            grads = torch.autograd.grad(loss(fast, batch.support_x[i], batch.support_y[i]), fast, create_graph=True)
            if first_order:
                grads = [g.detach() for g in grads]
            fast = [p - INNER_LR * g for p, g in zip(fast, grads, strict=True)]
        total = total + loss(fast, batch.query_x[i], batch.query_y[i])
    return list(torch.autograd.grad(total / batch.num_tasks, params))


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("estimator", ["unrolled", "first_order"])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_equals_the_reference_on_the_original(net_name, strategy, estimator, steps):
    net, channels = make_net(net_name)
    batch = image_batch(channels)
    learner = MetaLearner(accelerate(net), F.cross_entropy, INNER_LR, steps, estimator, strategy)
    grads, _ = learner.meta_gradient(batch)
    expected = reference_meta_gradient(net, batch, steps, first_order=estimator == "first_order")
    names = [name for name, _ in net.named_parameters()]
    assert list(grads["params"]) == names
    for name, reference in zip(names, expected, strict=True):
        torch.testing.assert_close(grads["params"][name], reference, rtol=1e-10, atol=1e-12, msg=name)


def snapshot(net: nn.Module) -> list[tuple]:
    """Every module's name, class, training flag and its own tensors (name, identity and a copy of the value)."""
    entries = []
    for name, module in net.named_modules():
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        entries.append((name, type(module), module.training, [(n, id(t), t.clone()) for n, t in own]))
    return entries


def assert_same(before: list[tuple], after: list[tuple]) -> None:
    assert [entry[:3] for entry in before] == [entry[:3] for entry in after]
    for (_, _, _, tensors_before), (_, _, _, tensors_after) in zip(before, after, strict=True):
        assert [(n, i) for n, i, _ in tensors_before] == [(n, i) for n, i, _ in tensors_after]
        for (_, _, value_before), (_, _, value_after) in zip(tensors_before, tensors_after, strict=True):
            assert torch.equal(value_before, value_after)


@pytest.mark.parametrize("net_name", list(NETS))
def test_the_original_is_unchanged_and_the_copy_shares_its_tensors_and_names(net_name):
    net, channels = make_net(net_name)
    before = snapshot(net)
    fast = accelerate(net)
    batch = image_batch(channels)
    MetaLearner(fast, F.cross_entropy, INNER_LR, 1, "unrolled", "loop").meta_gradient(batch)
    fast.train()(batch.query_x[0])  # a train-mode forward of the copy itself updates no running statistics
    assert_same(before, snapshot(net))
    assert [(n, id(p)) for n, p in fast.named_parameters()] == [(n, id(p)) for n, p in net.named_parameters()]
    assert [(n, id(b)) for n, b in fast.named_buffers()] == [(n, id(b)) for n, b in net.named_buffers()]
    assert list(fast.state_dict()) == list(net.state_dict())
    state = (dict(net.named_parameters()), dict(net.named_buffers()))
    with torch.no_grad():
        output = functional_call(fast, state, (batch.query_x[0],), strict=True)
        expected = functional_call(copy.deepcopy(net).train(), state, (batch.query_x[0],))
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())


def test_layers_are_replaced_exactly_where_the_fast_path_applies():
    class MyNorm(nn.BatchNorm2d):
        pass

    conv = nn.Conv2d(2, 2, 3, padding=1)
    net = nn.Sequential(
        conv,
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        MyNorm(2),
        nn.ReLU(),
        nn.MaxPool2d(2, return_indices=True),
        nn.Conv1d(2, 2, 1),
        nn.BatchNorm1d(2),
        conv,
    )
    fast = accelerate(net)
    kinds = [type(m) for m in fast]
    assert kinds == [
        ChannelsLastConv2d,
        TransductiveBatchNorm2d,
        nn.MaxPool2d,  # pooled before the ReLU: the same function on a quarter of the values
        nn.ReLU,
        nn.Conv2d,  # reflect padding: torch's layer
        MyNorm,  # a subclass may have its own forward
        nn.ReLU,  # not swapped with a pooling that returns indices
        nn.MaxPool2d,
        nn.Conv1d,
        nn.BatchNorm1d,
        ChannelsLastConv2d,
    ]
    assert fast[0] is fast[10] and fast[0] is not conv  # a shared module stays shared, as a copy
    assert type(conv) is nn.Conv2d and type(net[2]) is nn.ReLU
    assert type(accelerate(nn.BatchNorm2d(3))) is TransductiveBatchNorm2d  # the root itself is replaced too


def test_the_copy_runs_the_lean_kernels_channels_last_and_vmap_is_allowed():
    net, channels = make_net("blocks")
    fast = accelerate(net)
    x = image_batch(channels).support_x[0]
    features = in_context(fast, ExecutionContext(vectorised=False, differentiation="autograd"))[:2](x)
    assert features.is_contiguous(memory_format=torch.channels_last)
    assert type(features.grad_fn).__name__.startswith("_BatchNorm")
    assert type(features.grad_fn.next_functions[0][0]).__name__.startswith("_Conv2d")
    assert MetaLearner(fast, F.cross_entropy, INNER_LR, 1, strategy="vmap").strategy == "vmap"
    # MetaLearner accelerates the user's own net itself: its torch batch norm no longer forbids vmap
    assert MetaLearner(net, F.cross_entropy, INNER_LR, 1, strategy="vmap").strategy == "vmap"
