"""``accelerate(model)``: a user's convolutional network on the fast path of ``conv4``.

A structural copy of the module in which torch's layers are replaced by those of ``models.layers``, which
compute the same function with the kernels and memory layouts the meta-learner's execution context calls for:

- every ``nn.Conv2d`` (exactly that class) with zero padding becomes a ``ChannelsLastConv2d``: the same
  object state (``weight``, ``bias``, stride, padding, dilation, groups, hooks), channels-last activations
  under the ``"loop"`` strategy and, under plain autograd, the double backward of ``models.convolution``;
- every ``nn.BatchNorm2d`` (exactly that class) becomes a ``TransductiveBatchNorm2d``: the statistics of the
  current batch, ``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)``, with fused kernels
  under ``"loop"``, the double backward of ``models.batch_norm`` under plain autograd, and primitive ops under
  ``vmap`` (where torch's own batch norm is refused: its batching rule is wrong at second order);
- in every ``nn.Sequential``, an ``nn.ReLU`` directly followed by an ``nn.MaxPool2d`` (without
  ``return_indices``) trade places: ``maxpool(relu(x)) = relu(maxpool(x))`` because ReLU is monotone, and the
  gradients of every order agree (where a window's maximum is <= 0 both are zero; elsewhere both pass through
  the same maximum), so the ReLU runs on a quarter of the values, as in ``conv4``.

Batch norm policy (MAML's transductive batch norm): the copy's batch norms use the current batch's statistics
in training and evaluation mode alike, whatever ``track_running_stats`` and ``momentum`` say; the running
statistics stay registered under their names (so ``state_dict`` and ``functional_call`` keys are the
original's) but are neither read nor updated. A model whose eval-mode predictions should use running
statistics is deployed as the original module, outside the meta-learner. This changes the function for an
original in evaluation mode (torch's batch norm would then use the running statistics): such a model is
meta-learned with batch statistics here.

Everything else (other layers, subclasses of the replaced ones, other padding modes, ``Conv1d``/``Conv3d``,
``BatchNorm1d``/``3d``, custom ``forward`` methods) is copied as it is and computes what it computed; a custom
``forward`` that calls ``F.conv2d`` itself gets no acceleration but stays correct.

The copy shares the original's parameter and buffer tensors (nothing is duplicated; an optimiser stepping the
copy's parameters trains the original, as with ``torch.compile``); the original's modules, classes, training
flags and attributes are never changed. ``accelerate(copy.deepcopy(model))`` gives an independent copy.
"""

from __future__ import annotations

import copy
import itertools

from torch import nn

from torchmaml.models.layers import ChannelsLastConv2d, TransductiveBatchNorm2d


def accelerates(module: nn.Module) -> bool:
    """Whether ``module`` has a layer ``accelerate`` replaces (an ``nn.Conv2d`` with zero padding or an
    ``nn.BatchNorm2d``)."""
    return any(
        (type(m) is nn.Conv2d and m.padding_mode == "zeros") or type(m) is nn.BatchNorm2d for m in module.modules()
    )


def accelerate(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on ``conv4``'s fast path (module docstring): the same function (with batch
    statistics in every batch norm), the same parameter and buffer names and tensors."""
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}  # deepcopy's memo
    copied = copy.deepcopy(module, memo=shared)
    replaced: dict[int, tuple[nn.Module, nn.Module]] = {}
    root = _replacement(copied, replaced)
    for parent in list(root.modules()):
        for name, child in parent.named_children():
            setattr(parent, name, _replacement(child, replaced))
        if type(parent) is nn.Sequential:
            _pool_before_relu(parent)
    return root


def _replacement(module: nn.Module, replaced: dict[int, tuple[nn.Module, nn.Module]]) -> nn.Module:
    """The fast layer for ``module`` (one per module object, so shared modules stay shared), else ``module``.
    ``replaced`` maps ``id(module)`` to ``(module, its replacement)``, keeping ``module`` alive so that its id is
    not reused while the walk runs."""
    if id(module) not in replaced:
        fast = module
        if type(module) is nn.Conv2d and module.padding_mode == "zeros":
            fast.__class__ = ChannelsLastConv2d  # a subclass with no state of its own: the same layer, faster
        elif type(module) is nn.BatchNorm2d:
            fast = TransductiveBatchNorm2d.from_batch_norm(module)
        replaced[id(module)] = (module, fast)
    return replaced[id(module)][1]


def _pool_before_relu(sequence: nn.Sequential) -> None:
    """Swap each ``nn.ReLU`` that is directly followed by an ``nn.MaxPool2d`` with that pooling layer."""
    names = list(sequence._modules)
    index = 0
    while index < len(names) - 1:
        first, second = sequence._modules[names[index]], sequence._modules[names[index + 1]]
        if type(first) is nn.ReLU and type(second) is nn.MaxPool2d and not second.return_indices:
            sequence._modules[names[index]], sequence._modules[names[index + 1]] = second, first
            index += 2
        else:
            index += 1
