"""The user's ``nn.Module`` seen as a pure function ``f(params, x)``.

The module is never mutated: every call goes through ``torch.func.functional_call`` with an explicit
dictionary of parameters. What the meta-learner evaluates, for any module:

- **Parameters.** ``parameters()`` are the trainable ones (``requires_grad=True``): the point ``w`` that the
  inner loop adapts and the meta-gradient is taken at. Frozen parameters (``requires_grad=False``) are
  passed as constants: neither adapted nor meta-learned.
- **Buffers** are read from the module at each call and passed as fresh clones, so a forward pass that
  updates a buffer in place never leaks state from one task to another (the update is discarded).
- **Speed**: ``nn.Conv2d``/``nn.BatchNorm2d`` (and ``nn.ReLU`` before ``nn.MaxPool2d``) run as
  ``torchmaml.models.accelerate`` makes them: the same function on conv4's fast kernels.
- **Batch norm** (every ``nn.BatchNorm*``/``nn.SyncBatchNorm``) normalises with the statistics of the batch
  it is given, in train and eval mode alike (the "transductive" policy of MAML): its running statistics are
  neither read nor updated while meta-learning. ``MetaLearner.adapt`` sets the adapted copy's running
  statistics to the support set's, so that copy in ``eval()`` mode predicts every example on its own.
- **Attention** runs with the math kernel of ``scaled_dot_product_attention`` (the fused CPU/CUDA kernels have
  no double backward, which second-order MAML needs).
- **Inputs**: ``x`` a tensor is one positional argument, a tuple several, a dict keyword arguments; the
  output may be any tensor or pytree of tensors: the loss receives it as the model returns it.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

Params = dict[str, torch.Tensor]

BATCH_NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
CONV_TYPES = (nn.modules.conv._ConvNd,)
# recurrent layers whose torch kernels write a batched hidden state into an unbatched buffer under vmap
RECURRENT_TYPES = (nn.RNNBase,)


class FunctionalModel:
    """``model(params, x)`` evaluates ``module`` at ``params`` without touching its own state."""

    def __init__(self, module: nn.Module) -> None:
        from torchmaml.models.accelerate import accelerate, accelerates  # models.layers imports this module

        self.module = module
        evaluated = accelerate(module) if accelerates(module) else module
        if any(isinstance(m, BATCH_NORM_TYPES) for m in evaluated.modules()):
            evaluated = batch_statistics_view(evaluated)
        modules = list(evaluated.modules())
        self.step_aware = any(getattr(m, "uses_inner_step", False) for m in modules)
        self.has_fused_batch_norm = any(isinstance(m, BATCH_NORM_TYPES) for m in modules)
        self.has_convolution = any(isinstance(m, CONV_TYPES) for m in modules)
        self.has_recurrent = any(isinstance(m, RECURRENT_TYPES) for m in modules)
        self._evaluated = evaluated
        self._buffer_names = frozenset(name for name, _ in evaluated.named_buffers())

    def __call__(self, params: Params, x: Any) -> Any:
        args, kwargs = model_arguments(x)
        return self._call(params, args, kwargs, self._buffer_clones())

    def apply(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` at ``params``: the module's own call signature."""
        return self._call(params, args, kwargs, self._buffer_clones())

    def updated_buffers(self, params: Params, x: Any) -> list[str]:
        """The names of the buffers that a forward pass at ``params`` on ``x`` changes in place: updates that the
        meta-learner discards (each call gets fresh clones)."""
        buffers = self._buffer_clones()
        args, kwargs = model_arguments(x)
        self._call(params, args, kwargs, buffers)
        current = dict(self.module.named_buffers())
        return [name for name, value in buffers.items() if not torch.equal(value, current[name])]

    def _buffer_clones(self) -> Params:
        return {name: b.clone() for name, b in self.module.named_buffers() if name in self._buffer_names}

    def _call(self, params: Params, args: tuple, kwargs: dict[str, Any], buffers: Params) -> Any:
        if self._evaluated is not self.module and not torch.compiler.is_compiling():
            _copy_modes(self.module, self._evaluated)
        tensors = {name: p.detach() for name, p in self.module.named_parameters() if not p.requires_grad}
        tensors.update(params)
        with sdpa_kernel(SDPBackend.MATH):
            return functional_call(self._evaluated, (tensors, buffers), args, kwargs)

    def at_step(self, step: int | None) -> AbstractContextManager:
        """``at_inner_step(step)`` for models with per-step layers; a no-op otherwise (so that
        ``torch.compile`` never sees the context variable on the common path)."""
        return at_inner_step(step) if self.step_aware else nullcontext()

    def parameters(self) -> Params:
        """The module's trainable parameters, detached: the point ``w`` at which meta-gradients are taken."""
        return {name: p.detach() for name, p in self.module.named_parameters() if p.requires_grad}


def model_arguments(x: Any) -> tuple[tuple, dict[str, Any]]:
    """``x`` as the module's call arguments: a tuple is positional arguments, a dict keyword arguments, anything
    else the one positional argument."""
    if isinstance(x, tuple):
        return x, {}
    if isinstance(x, Mapping):
        return (), dict(x)
    return (x,), {}


def batch_statistics_view(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose batch-norm layers keep no running statistics, so they normalise with the
    statistics of the current batch in train and eval mode alike (``F.batch_norm`` with no running buffers).
    Parameter and buffer names are the original's (``functional_call`` supplies their values); the copy's
    tensors are the original's own, so no memory is duplicated."""
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}  # not duplicated
    view = copy.deepcopy(module, memo=shared)
    for layer in view.modules():
        if isinstance(layer, BATCH_NORM_TYPES):
            layer.track_running_stats = False
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                layer.register_buffer(name, None)
    return view


def _copy_modes(source: nn.Module, target: nn.Module) -> None:
    """``target``'s modules take the train/eval flags of ``source``'s modules of the same names."""
    flags = {name: module.training for name, module in source.named_modules()}
    for name, module in target.named_modules():
        module.training = flags.get(name, module.training)


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
