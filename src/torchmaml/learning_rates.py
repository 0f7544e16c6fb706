"""Inner learning-rate rules: how the step size ``alpha_s`` of inner step ``s`` is obtained.

A rule is a small ``nn.Module``: its parameters (if any) are meta-parameters, exposed through
``MetaLearner.parameters()`` so the outer optimiser learns them, and ``rate(tensors, step)`` maps the
current values of those parameters (``tensors``, keyed like ``named_parameters()``) to the rate of ``step``:

- ``fixed``: ``alpha`` for every step and parameter (MAML).
- ``scalar``: one learnable ``alpha`` (the rate AlphaMAML tunes online).
- ``meta_sgd``: one learnable rate per parameter *element*, ``w_i = w - alpha ∘ grad`` (Li et al. 2017).
- ``per_layer_per_step`` (LSLR): one learnable rate per parameter *tensor* per inner step (Antoniou et al.
  2018, MAML++).

Rates are not constrained to be positive, as in the papers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from torchmaml.errors import ConfigError
from torchmaml.functional import Params
from torchmaml.inner import StepLR

INNER_LR_MODES = ("fixed", "scalar", "meta_sgd", "per_layer_per_step")


class FixedLR(nn.Module):
    """A constant inner learning rate ``alpha`` for every step and parameter (plain MAML)."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = float(lr)

    def rate(self, tensors: Params, step: int) -> StepLR:
        """``alpha``, whatever the step."""
        return self.lr

    def extra_repr(self) -> str:
        return f"lr={self.lr}"


class ScalarLR(nn.Module):
    """One learnable ``alpha``, shared by every step and parameter."""

    def __init__(self, lr: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.lr = nn.Parameter(torch.tensor(float(lr), dtype=dtype))

    def rate(self, tensors: Params, step: int) -> StepLR:
        return tensors["lr"]


class MetaSGDLR(nn.Module):
    """Meta-SGD: a learnable rate for every element of every adapted parameter, shared across steps."""

    def __init__(self, lr: float, shapes: dict[str, torch.Size], dtype: torch.dtype) -> None:
        super().__init__()
        self.names = list(shapes)
        self.rates = nn.ParameterList(nn.Parameter(torch.full(s, float(lr), dtype=dtype)) for s in shapes.values())

    def rate(self, tensors: Params, step: int) -> StepLR:
        return {name: tensors[f"rates.{i}"] for i, name in enumerate(self.names)}


class PerLayerPerStepLR(nn.Module):
    """LSLR: a learnable rate per adapted parameter tensor and per inner step (MAML++)."""

    def __init__(self, lr: float, names: Iterable[str], steps: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.names = list(names)
        self.steps = steps
        self.rates = nn.ParameterList(nn.Parameter(torch.full((steps,), float(lr), dtype=dtype)) for _ in self.names)

    def rate(self, tensors: Params, step: int) -> StepLR:
        if step >= self.steps:
            raise ConfigError(
                f"inner_lr_mode 'per_layer_per_step' learned {self.steps} per-step rates; it cannot take step "
                f"{step + 1} (adapt with at most {self.steps} steps, or pass inner_lr to fix the rate)"
            )
        return {name: tensors[f"rates.{i}"][step] for i, name in enumerate(self.names)}


def make_inner_lr(mode: str, lr: float, params: dict[str, torch.Tensor], steps: int) -> nn.Module:
    """The rule for ``mode`` (one of ``INNER_LR_MODES``), initialised at ``lr``, for the adapted ``params``."""
    first = next(iter(params.values()))
    if mode == "fixed":
        return FixedLR(lr)
    if mode == "scalar":
        return ScalarLR(lr, first.dtype).to(first.device)
    if mode == "meta_sgd":
        return MetaSGDLR(lr, {name: p.shape for name, p in params.items()}, first.dtype).to(first.device)
    if mode == "per_layer_per_step":
        return PerLayerPerStepLR(lr, params, max(steps, 1), first.dtype).to(first.device)
    raise ConfigError(f"inner_lr_mode: unknown mode {mode!r}; choose one of {', '.join(INNER_LR_MODES)}")
