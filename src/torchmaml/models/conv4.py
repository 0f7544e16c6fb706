"""The 4-block convolutional network of the few-shot literature (Vinyals et al. 2016; Finn et al. 2017).

Each block is ``3x3 conv (64 filters) -> batch norm -> ReLU -> 2x2 max-pool`` (or, in the strided variant
MAML used for Omniglot, a stride-2 convolution and no pooling); a linear head maps the flattened
features to the ``ways`` logits.

Batch norm is :class:`MetaBatchNorm2d`: transductive batch statistics, written with primitive tensor ops
(correct under ``torch.func.vmap``; the fused ``batch_norm`` kernel's vmap rule gives wrong second-order
gradients, functorch#534) except in the copies the meta-learner builds for running tasks one at a time (the
``"loop"`` strategy), where the fused kernel computes the same function faster, and, where the exact estimator
then differentiates with plain autograd, with the double backward of ``torchmaml.models.batch_norm``. It keeps
no running statistics, so nothing can leak between tasks. The layers' kernels per execution context are
``torchmaml.models.layers``'s, shared with ``models.accelerate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchmaml.context import ExecutionContext
from torchmaml.models.layers import ChannelsLastConv2d, ContextDependent, Kernels, transductive_batch_norm


class MetaBatchNorm2d(ContextDependent, nn.Module):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the statistics of the current batch.

    ``mean`` and the biased ``var`` are taken over the batch and spatial axes, per channel; this is the
    "transductive" policy of the original MAML: the same at meta-train and meta-test time.

    With ``steps = K`` it has MAML++'s per-step weights and biases (BNWB, Antoniou et al. 2018): rows
    ``0..K`` of ``weight``/``bias`` ``[K + 1, C]``, row ``s`` used at inner step ``s`` (the copy the
    meta-learner evaluates at step ``s`` is specialised for it, :meth:`specialise`; outside the inner loop,
    e.g. in a deployed adapted model, row ``K``). MAML++'s per-step running statistics (BNRS) have no
    counterpart here: transductive statistics are never stored.

    ``running_mean``/``running_var`` are ``None`` except in the copies ``MetaLearner.adapt`` returns, which hold
    the support set's statistics (not saved in ``state_dict``): in ``eval()`` mode such a copy normalises with
    them, so each example is predicted on its own.
    """

    def __init__(self, channels: int, eps: float = 1e-5, steps: int | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.steps = steps
        self.inner_steps = steps  # FunctionalModel evaluates it in one copy per inner step
        self.row = steps  # the row of the per-step weights this layer uses (``None`` without them)
        shape = (channels,) if steps is None else (steps + 1, channels)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", None, persistent=False)
        self.register_buffer("running_var", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.row is not None:
            weight, bias = weight[self.row], bias[self.row]
        if not self.training and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, training=False, eps=self.eps)
        return transductive_batch_norm(x, weight, bias, self.eps, self.kernels)

    def specialise(self, context: ExecutionContext) -> None:
        """Fix the kernels for ``context`` and, with per-step weights, the row of its inner step."""
        self.kernels = Kernels.for_context(context)
        if self.steps is not None:
            self.row = self.steps if context.step is None else min(context.step, self.steps)


def conv_block(in_channels: int, out_channels: int, strided: bool, bn_steps: int | None = None) -> nn.Sequential:
    """``conv -> batch norm -> ReLU -> max-pool`` (or a stride-2 conv with no pooling).

    The pooling runs before the ReLU: ``maxpool(relu(x)) = relu(maxpool(x))`` because ReLU is monotone, and the
    gradients agree too (where the window's maximum is <= 0 both are zero), so this is the same function
    with a ReLU on a quarter of the values.
    """
    if strided:
        return nn.Sequential(
            ChannelsLastConv2d(in_channels, out_channels, 3, stride=2, padding=1),
            MetaBatchNorm2d(out_channels, steps=bn_steps),
            nn.ReLU(),
        )
    return nn.Sequential(
        ChannelsLastConv2d(in_channels, out_channels, 3, padding=1),
        MetaBatchNorm2d(out_channels, steps=bn_steps),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )


def conv4(
    ways: int,
    in_channels: int = 1,
    filters: int = 64,
    image_size: int = 28,
    strided: bool = False,
    bn_steps: int | None = None,
) -> nn.Sequential:
    """Four conv blocks and a linear head: ``[N, in_channels, image_size, image_size] -> [N, ways]``.

    ``bn_steps = K`` gives every batch norm MAML++'s per-step weights for ``K`` inner steps.
    """
    blocks = [conv_block(in_channels if i == 0 else filters, filters, strided, bn_steps) for i in range(4)]
    size = image_size
    for _ in range(4):
        size = (size + 1) // 2 if strided else size // 2
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(filters * size * size, ways))
