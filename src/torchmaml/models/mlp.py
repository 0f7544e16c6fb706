"""The sinusoid regression network of Finn et al. (2017): 1-40-40-1 with ReLU."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1) -> nn.Sequential:
    """A fully connected ReLU network ``in -> hidden[0] -> ... -> out``."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
