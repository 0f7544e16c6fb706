"""Memory layouts of activations, for the CPU kernels that are only fast when their operands agree."""

from __future__ import annotations

import torch


def layout_of(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format, channels-last or contiguous. Gradients are put in their input's format before
    torch's batch-norm kernels, which run many times slower on mixed layouts (``benchmarks/kernels.py``; on conv4's
    support pass autograd adds NCHW zeros from torch's own double-backward formulas to channels-last
    gradients), and before its convolution kernels."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
