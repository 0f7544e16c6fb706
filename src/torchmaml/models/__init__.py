"""Benchmark models. Any ``nn.Module`` works with ``MetaLearner``; these are the papers' ones."""

from torchmaml.models.conv4 import MetaBatchNorm2d, conv4
from torchmaml.models.mlp import mlp

__all__ = ["MetaBatchNorm2d", "conv4", "mlp"]
