"""Parameter dictionaries (any pytree of tensors) as one flat vector, and back."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def flatten(tree: Any) -> torch.Tensor:
    """All tensors of ``tree`` (e.g. a parameter dictionary, in its order) as one vector."""
    return torch.cat([leaf.reshape(-1) for leaf in tree_flatten(tree)[0]])


def unflatten(vector: torch.Tensor, like: Any) -> Any:
    """The inverse of :func:`flatten`: ``vector`` as a pytree shaped like ``like`` (views of ``vector``)."""
    leaves, spec = tree_flatten(like)
    parts = vector.split([leaf.numel() for leaf in leaves])
    return tree_unflatten([part.view_as(leaf) for part, leaf in zip(parts, leaves, strict=True)], spec)
