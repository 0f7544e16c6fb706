"""conv4's fast path is the same function as the textbook block: fused channels-last batch norm when tasks
run one at a time, the pooling before the ReLU; and the allocator tuning is opt-in and can be switched off."""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

from torchmaml import MetaLearner, TaskBatch
from torchmaml.allocator import OPT_OUT, keep_freed_memory
from torchmaml.context import ONE_TASK_AT_A_TIME
from torchmaml.models import MetaBatchNorm2d, conv4
from torchmaml.models.layers import in_context


def textbook_conv4(model: nn.Sequential) -> nn.Sequential:
    """The same weights in the order of the papers: conv -> batch norm -> ReLU -> max-pool."""
    blocks = [nn.Sequential(block[0], block[1], nn.ReLU(), nn.MaxPool2d(2)) for block in model[:4]]
    return nn.Sequential(*blocks, *model[4:])


def image_batch(tasks: int = 3, ways: int = 3) -> TaskBatch:
    generator = torch.Generator().manual_seed(0)

    def split(shots: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(tasks, ways * shots, 1, 16, 16, generator=generator, dtype=torch.float64)
        return images, torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()

    return TaskBatch(*split(1), *split(4))


def meta_gradient(model: nn.Module, strategy: str) -> torch.Tensor:
    learner = MetaLearner(model, F.cross_entropy, 0.4, 2, "unrolled", strategy)
    grads, _ = learner.meta_gradient(image_batch())
    return torch.cat([g.reshape(-1) for g in grads["params"].values()])


def test_conv4_equals_the_textbook_block_order_and_strategies_agree():
    torch.manual_seed(0)
    model = conv4(ways=3, filters=8, image_size=16).double()
    fast_loop = meta_gradient(model, "loop")  # fused channels-last batch norm
    primitive_vmap = meta_gradient(model, "vmap")  # batch norm from primitive ops
    textbook = meta_gradient(textbook_conv4(model), "loop")
    assert torch.allclose(fast_loop, primitive_vmap, rtol=1e-10, atol=1e-12)
    assert torch.allclose(fast_loop, textbook, rtol=1e-10, atol=1e-12)


def test_batch_norm_runs_channels_last_only_when_tasks_run_one_at_a_time():
    norm = MetaBatchNorm2d(4).double()
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64)
    plain = norm(x)
    fused = in_context(norm, ONE_TASK_AT_A_TIME)(x)
    assert fused.is_contiguous(memory_format=torch.channels_last) and not plain.is_contiguous(
        memory_format=torch.channels_last
    )
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)


def test_allocator_tuning_can_be_switched_off_and_yields_to_the_users_setting(monkeypatch):
    monkeypatch.setenv(OPT_OUT, "0")
    assert keep_freed_memory.__wrapped__() is False
    monkeypatch.delenv(OPT_OUT)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory.__wrapped__() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert keep_freed_memory.__wrapped__() is (platform.libc_ver()[0] == "glibc")  # mallopt is glibc's


def test_building_a_learner_leaves_the_allocator_alone(monkeypatch):
    """The glibc tuning is process-wide, so it is an application's opt-in (the command line), never a side effect
    of constructing a MetaLearner."""
    import ctypes.util

    from torchmaml import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name))
    MetaLearner(conv4(ways=3, filters=4, image_size=16), F.cross_entropy)
    assert calls == []
