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
- **Execution context**: ``model(params, x, context)`` evaluates the module in an explicit
  ``torchmaml.context.ExecutionContext`` (tasks vectorised or one at a time, how gradients are taken, the
  inner step). The module is evaluated through one view per context, built once when the ``FunctionalModel``
  is made: a copy that shares the module's tensors, in which every context-dependent layer
  (``torchmaml.models.layers.ContextDependent``) was built with that context's kernels and inner step. No
  layer reads global state; models without such layers have a single view.
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
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from torchmaml.context import DIFFERENTIATIONS, VECTORISED, ExecutionContext
from torchmaml.models.accelerate import accelerate, accelerates
from torchmaml.models.layers import ContextDependent, in_context

Params = dict[str, torch.Tensor]

BATCH_NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
CONV_TYPES = (nn.modules.conv._ConvNd,)
# recurrent layers whose torch kernels write a batched hidden state into an unbatched buffer under vmap
RECURRENT_TYPES = (nn.RNNBase,)


class FunctionalModel:
    """``model(params, x, context)`` evaluates ``module`` at ``params`` in an execution context without touching
    its own state."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        evaluated = accelerate(module) if accelerates(module) else module
        if any(isinstance(m, BATCH_NORM_TYPES) for m in evaluated.modules()):
            evaluated = batch_statistics_view(evaluated)
        modules = list(evaluated.modules())
        # the layers evaluated inside a module that runs its own functional calls (``Particles``) count for the kinds
        kinds = modules + [n for m in modules if hasattr(m, "nested_modules") for n in m.nested_modules()]
        self.has_fused_batch_norm = any(isinstance(m, BATCH_NORM_TYPES) for m in kinds)
        self.has_convolution = any(isinstance(m, CONV_TYPES) for m in kinds)
        self.has_recurrent = any(isinstance(m, RECURRENT_TYPES) for m in kinds)
        self._buffer_names = frozenset(name for name, _ in evaluated.named_buffers())
        per_step = [m.inner_steps for m in modules if isinstance(m, ContextDependent) and m.inner_steps is not None]
        self._last_step = max(per_step, default=None)  # steps past it use the weights of step _last_step
        self._evaluated = evaluated
        self._views: dict[tuple, nn.Module] | None = None
        if any(isinstance(m, ContextDependent) for m in modules):  # built now, never while torch.compile traces
            steps = [None] if self._last_step is None else [None, *range(self._last_step + 1)]
            contexts = [
                ExecutionContext(vectorised, differentiation, step)
                for vectorised in (True, False)
                for differentiation in DIFFERENTIATIONS
                for step in steps
            ]
            self._views = {  # keyed by plain values, which torch.compile looks up without a graph break
                (context.vectorised, context.differentiation, context.step): in_context(evaluated, context)
                for context in contexts
            }

    def __call__(self, params: Params, x: Any, context: ExecutionContext = VECTORISED) -> Any:
        args, kwargs = model_arguments(x)
        return self._call(params, args, kwargs, self._buffer_clones(), context)

    def apply(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` at ``params`` (default context): the module's own call signature."""
        return self._call(params, args, kwargs, self._buffer_clones(), VECTORISED)

    def apply_in(self, context: ExecutionContext, params: Params, args: tuple, kwargs: dict[str, Any]) -> Any:
        """``module(*args, **kwargs)`` at ``params``, evaluated in ``context``."""
        return self._call(params, args, kwargs, self._buffer_clones(), context)

    def updated_buffers(self, params: Params, x: Any) -> list[str]:
        """The names of the buffers that a forward pass at ``params`` on ``x`` changes in place: updates that the
        meta-learner discards (each call gets fresh clones)."""
        buffers = self._buffer_clones()
        args, kwargs = model_arguments(x)
        self._call(params, args, kwargs, buffers, VECTORISED)
        current = dict(self.module.named_buffers())
        return [name for name, value in buffers.items() if not torch.equal(value, current[name])]

    def _buffer_clones(self) -> Params:
        return {name: b.clone() for name, b in self.module.named_buffers() if name in self._buffer_names}

    def view(self, context: ExecutionContext) -> nn.Module:
        """The module as evaluated in ``context`` (a view sharing the module's tensors)."""
        if self._views is None:
            return self._evaluated
        step = context.step
        if step is not None:
            step = None if self._last_step is None else min(step, self._last_step)
        return self._views[context.vectorised, context.differentiation, step]

    def _call(
        self, params: Params, args: tuple, kwargs: dict[str, Any], buffers: Params, context: ExecutionContext
    ) -> Any:
        evaluated = self.view(context)
        if evaluated is not self.module and not torch.compiler.is_compiling():
            _copy_modes(self.module, evaluated)
        tensors = {name: p.detach() for name, p in self.module.named_parameters() if not p.requires_grad}
        tensors.update(params)
        with sdpa_kernel(SDPBackend.MATH):
            return functional_call(evaluated, (tensors, buffers), args, kwargs)

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
