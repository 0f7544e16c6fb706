"""Benchmark models. Any ``nn.Module`` works with ``MetaLearner``; these are the papers' ones."""

from torchmaml.models.mlp import mlp

__all__ = ["mlp"]
