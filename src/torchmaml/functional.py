"""The user's ``nn.Module`` seen as a pure function ``f(params, x)``.

The module is never mutated: every call goes through ``torch.func.functional_call`` with an explicit
dictionary of parameters. Buffers (for example batch-norm running statistics) are passed as fresh
clones on each call, so running statistics can never leak from one task to another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]

BATCH_NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
CONV_TYPES = (nn.modules.conv._ConvNd,)


class FunctionalModel:
    """``model(params, x)`` evaluates ``module`` at ``params`` without touching its own state."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.step_aware = any(getattr(m, "uses_inner_step", False) for m in module.modules())
        self.has_fused_batch_norm = any(isinstance(m, BATCH_NORM_TYPES) for m in module.modules())
        self.has_convolution = any(isinstance(m, CONV_TYPES) for m in module.modules())

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        buffers = {name: b.clone() for name, b in self.module.named_buffers()}
        return functional_call(self.module, (params, buffers), (x,))

    def at_step(self, step: int | None) -> AbstractContextManager:
        """``at_inner_step(step)`` for models with per-step layers; a no-op otherwise (so that
        ``torch.compile`` never sees the context variable on the common path)."""
        return at_inner_step(step) if self.step_aware else nullcontext()

    def parameters(self) -> Params:
        """The module's current parameters, detached: the point ``w`` at which meta-gradients are taken."""
        return {name: p.detach() for name, p in self.module.named_parameters()}


# Per-thread evaluation state read by layers. A ``threading.local`` rather than a ``ContextVar``: torch.compile
# traces (and guards on) its attributes, while ``ContextVar.get`` breaks the graph.
_STATE = threading.local()


@contextmanager
def _setting(name: str, value: object) -> Iterator[None]:
    previous = getattr(_STATE, name, None)
    setattr(_STATE, name, value)
    try:
        yield
    finally:
        setattr(_STATE, name, previous)


def at_inner_step(step: int | None) -> AbstractContextManager:
    """Within the block, models are evaluated at inner step ``step`` (layers with per-step parameters, like
    MAML++'s per-step batch norm, read it with :func:`current_inner_step`); ``None`` leaves it unset."""
    return _setting("inner_step", step)


def current_inner_step() -> int | None:
    """The inner step set by :func:`at_inner_step`, or ``None`` outside any (a deployed, adapted model)."""
    return getattr(_STATE, "inner_step", None)


def unvectorised() -> AbstractContextManager:
    """Within the block no task axis is vectorised (the ``"loop"`` strategy: no ``torch.func.vmap`` over
    tasks), so layers may call fused kernels whose vmap batching rules are wrong for higher-order gradients
    (batch norm, functorch#534); :class:`torchmaml.models.MetaBatchNorm2d` then uses ``F.batch_norm``."""
    return _setting("unvectorised", True)


def is_unvectorised() -> bool:
    """Whether the caller is inside :func:`unvectorised` (fused kernels are safe)."""
    return bool(getattr(_STATE, "unvectorised", False))


def plain_autograd() -> AbstractContextManager:
    """Within the block one task's meta-gradient is taken with ``torch.autograd`` outside any ``torch.func``
    transform (the exact estimator under the ``"loop"`` strategy), where custom ``autograd.Function`` layers
    are cheap: :class:`torchmaml.models.MetaBatchNorm2d` then uses its own double backward."""
    return _setting("plain_autograd", True)


def is_plain_autograd() -> bool:
    """Whether the caller is inside :func:`plain_autograd`."""
    return bool(getattr(_STATE, "plain_autograd", False))
