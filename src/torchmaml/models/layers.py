"""The fast path's layers, shared by ``conv4`` and ``accelerate``: each is built with the kernels of one
execution context (``torchmaml.context``) and never reads global state.

``FunctionalModel`` evaluates a module through one view per execution context (:func:`in_context`: a copy that
shares the module's parameter and buffer tensors), in which every :class:`ContextDependent` layer has been
specialised for that context. The kernels (:class:`Kernels`):

- ``VMAP_SAFE`` (tasks may be vectorised, and any layer outside a view): batch norm is written with primitive
  tensor ops, as the fused kernel's batching rule gives wrong second-order gradients (functorch#534).
- ``FUSED`` (tasks one at a time, the ``"loop"`` strategy): activations are laid out channels-last, where
  torch's CPU kernels of batch norm and max-pooling are fastest, and batch norm runs as torch's fused kernel.
- ``OWN_DOUBLE_BACKWARD`` (in addition, the exact estimator differentiates with plain autograd): batch norm and
  convolution carry double backwards of their own (``models.batch_norm``, ``models.convolution``), faster
  than torch's for the Hessian-vector products of second-order MAML.

Every choice computes the same function; only the kernels and memory layouts differ.
"""

from __future__ import annotations

import copy
import enum
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from torchmaml.context import ExecutionContext
from torchmaml.models.batch_norm import batch_norm
from torchmaml.models.convolution import conv2d

_REDUCE = (0, 2, 3)


class Kernels(enum.Enum):
    """The kernels a fast-path layer computes its function with (module docstring)."""

    VMAP_SAFE = "vmap-safe"
    FUSED = "fused"
    OWN_DOUBLE_BACKWARD = "own double backward"

    @classmethod
    def for_context(cls, context: ExecutionContext) -> Kernels:
        """The fastest kernels that are correct in ``context``."""
        if context.vectorised:
            return cls.VMAP_SAFE
        return cls.OWN_DOUBLE_BACKWARD if context.differentiation == "autograd" else cls.FUSED

    @property
    def fused(self) -> bool:
        """Tasks run one at a time: channels-last activations and torch's fused batch norm."""
        return self is not Kernels.VMAP_SAFE


class ContextDependent:
    """A layer whose kernels (or, with ``inner_steps``, weights) depend on the execution context: its
    :meth:`specialise` fixes them for one context, in the copy that :func:`in_context` makes. Unspecialised,
    it uses ``VMAP_SAFE`` kernels and the weights of outside the inner loop."""

    kernels: Kernels = Kernels.VMAP_SAFE
    # inner steps with weights of their own (``None``: none); FunctionalModel builds views for steps 0..inner_steps
    inner_steps: int | None = None

    def specialise(self, context: ExecutionContext) -> None:
        """Fix this layer's kernels for ``context`` (called once, on a fresh copy)."""
        self.kernels = Kernels.for_context(context)


def in_context(module: nn.Module, context: ExecutionContext) -> nn.Module:
    """A copy of ``module`` whose :class:`ContextDependent` layers are specialised for ``context``; it shares
    ``module``'s parameter and buffer tensors (nothing is duplicated) and has the same parameter names."""
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}  # deepcopy's memo
    view = copy.deepcopy(module, memo=shared)
    for layer in view.modules():
        if isinstance(layer, ContextDependent):
            layer.specialise(context)
    return view


def transductive_batch_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, kernels: Kernels
) -> torch.Tensor:
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` for ``x`` ``[N, C, H, W]``, with the per-channel
    ``mean`` and biased ``var`` of the current batch (axes 0, 2, 3): ``F.batch_norm(x, None, None, weight,
    bias, training=True, eps=eps)``, nothing stored. ``weight``/``bias`` ``[C]`` or ``None`` (1 and 0).

    MAML's "transductive" policy: the same at meta-train and meta-test time, and no statistics can carry
    from one task to another. Computed with ``kernels`` (module docstring); with fused kernels the result is
    channels-last."""
    if kernels.fused:
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op after ChannelsLastConv2d
        if kernels is Kernels.OWN_DOUBLE_BACKWARD:  # torch's fused kernels with a lean double backward of our own
            channels = x.shape[1]
            weight = x.new_ones(channels) if weight is None else weight
            bias = x.new_zeros(channels) if bias is None else bias
            return batch_norm(x, weight, bias, eps)
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    mean = x.mean(dim=_REDUCE, keepdim=True)
    var = (x - mean).square().mean(dim=_REDUCE, keepdim=True)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = weight.view(1, -1, 1, 1) * scale
    y = (x - mean) * scale
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class TransductiveBatchNorm2d(ContextDependent, nn.Module):
    """:func:`transductive_batch_norm` as a layer: batch statistics in training and evaluation mode alike.

    ``affine=False`` has no ``weight``/``bias``. :meth:`from_batch_norm` makes one from a ``nn.BatchNorm2d``.
    Not a subclass of torch's ``_BatchNorm``, so the meta-learner may run it under ``vmap`` (its primitive-op
    form there is correct to second order, unlike the fused kernel's batching rule).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.register_parameter("weight", nn.Parameter(torch.ones(num_features)) if affine else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(num_features)) if affine else None)

    @classmethod
    def from_batch_norm(cls, norm: nn.BatchNorm2d) -> TransductiveBatchNorm2d:
        """The same normalisation with ``norm``'s ``eps`` and its own ``weight``/``bias`` tensors (shared, not
        copied) and training flag. ``norm``'s buffers (running statistics, ``num_batches_tracked``) are
        registered under the same names, so the state dict and ``functional_call`` names match ``norm``'s;
        they are never read or written. ``momentum`` and ``track_running_stats`` have no counterpart."""
        layer = cls(norm.num_features, norm.eps, affine=False)
        layer.affine = norm.affine
        layer.weight, layer.bias = norm.weight, norm.bias
        for name, buffer in norm.named_buffers(recurse=False):
            layer.register_buffer(name, buffer)
        return layer.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return transductive_batch_norm(x, self.weight, self.bias, self.eps, self.kernels)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class ChannelsLastConv2d(ContextDependent, nn.Conv2d):
    """``nn.Conv2d`` that, with fused kernels (tasks one at a time), lays its input out channels-last, so that
    this convolution, the batch norm and the pooling after it all run in the layout their CPU kernels are
    fastest in. A no-op for inputs already channels-last (every block after the first); for the one-channel
    images of the first block it is a clone, as a 1-channel tensor's layout is ambiguous and the convolution
    would otherwise answer in NCHW. With ``OWN_DOUBLE_BACKWARD`` kernels it is
    :func:`torchmaml.models.convolution.conv2d`, whose double backward is faster than torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels.fused and x.dim() == 4 and x.stride(1) != 1:
            x = x.clone(memory_format=torch.channels_last)
        if (
            self.kernels is Kernels.OWN_DOUBLE_BACKWARD
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):  # torch's kernels with a double backward that avoids torch's slow weight term (models.convolution)
            return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return super().forward(x)
