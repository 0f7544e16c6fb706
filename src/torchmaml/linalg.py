"""Linear algebra on pytrees of tensors (parameter dictionaries, or one flat vector): inner products and the
conjugate-gradient solver shared by iMAML (``estimators.implicit``) and TRPO (``rl.trpo``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch.utils._pytree import tree_leaves, tree_map

Tree = TypeVar("Tree")


def dot(a: Any, b: Any) -> torch.Tensor:
    """``<a, b>`` summed over all tensors of the pytrees ``a`` and ``b``: for dictionaries over the entries of
    ``a`` (``b`` may have more), for other pytrees over matching leaves; for two tensors, one dot product of
    their flattened values."""
    if isinstance(a, torch.Tensor):
        return a.reshape(-1) @ b.reshape(-1)
    if isinstance(a, Mapping):
        pairs = [(a_i, b[name]) for name, a_i in a.items()]
    else:
        pairs = list(zip(tree_leaves(a), tree_leaves(b), strict=True))
    return torch.stack([torch.sum(x * y) for x, y in pairs]).sum()


def conjugate_gradient(
    matvec: Callable[[Tree], Tree], rhs: Tree, iterations: int, *, tolerance: float | None = None
) -> Tree:
    """Conjugate gradient on ``A x = rhs`` from ``x = 0``, ``A`` symmetric positive definite given by ``matvec``;
    ``rhs`` and ``x`` are pytrees of tensors.

    Runs ``iterations`` steps; with a ``tolerance`` it stops after the step whose squared residual norm falls
    below it (a data-dependent branch: not under ``vmap``). Without one the number of steps is fixed, so it runs
    under ``vmap``; once a residual is exactly zero further steps leave ``x`` unchanged (a zero denominator
    gives a zero step instead of a division by zero).
    """
    solution = tree_map(torch.zeros_like, rhs)
    residual, direction = rhs, rhs
    residual_sq = dot(residual, residual)
    for _ in range(iterations):
        product = matvec(direction)
        step = _ratio(residual_sq, dot(direction, product))
        solution = _plus_scaled(solution, step, direction)
        residual = _plus_scaled(residual, -step, product)
        new_residual_sq = dot(residual, residual)
        if tolerance is not None and new_residual_sq < tolerance:
            break
        momentum = _ratio(new_residual_sq, residual_sq)
        direction = _plus_scaled(residual, momentum, direction)
        residual_sq = new_residual_sq
    return solution


@dataclass(frozen=True)
class CGReport(Generic[Tree]):
    """What :func:`truncated_conjugate_gradient` found: the ``solution``, the relative residual
    ``||rhs - A x|| / ||rhs||`` (``0`` for ``rhs = 0``), the ``iterations`` taken before it stopped, and whether a
    direction of non-positive curvature ``d^T A d <= 0`` stopped it (``negative_curvature``). All tensors, so
    that it runs under ``vmap``."""

    solution: Tree
    residual: torch.Tensor
    iterations: torch.Tensor
    negative_curvature: torch.Tensor


def truncated_conjugate_gradient(matvec: Callable[[Tree], Tree], rhs: Tree, iterations: int) -> CGReport[Tree]:
    """Conjugate gradient on ``A x = rhs`` from ``x = 0`` for a symmetric ``A`` that may be indefinite.

    Runs at most ``iterations`` steps. When a search direction ``d`` has ``d^T A d <= 0`` the system is not
    positive definite along ``d``: CG stops there and keeps the iterate it has (Steihaug's truncated CG); at the
    first step, where that iterate is ``0``, it returns ``rhs`` (the solution for ``A = I``, the steepest-descent
    direction) instead. The stop is a mask, not a branch, so it runs under ``vmap``; the report says what
    happened (``CGReport``).
    """
    solution = tree_map(torch.zeros_like, rhs)
    residual, direction = rhs, rhs
    residual_sq = dot(residual, residual)
    rhs_sq = residual_sq
    stopped = torch.zeros_like(residual_sq, dtype=torch.bool)
    taken = torch.zeros_like(residual_sq)
    for iteration in range(iterations):
        product = matvec(direction)
        curvature = dot(direction, product)
        negative = ~stopped & (curvature <= 0) & (residual_sq > 0)
        if iteration == 0:  # no iterate yet: fall back to x = rhs, whose residual is rhs - A rhs
            solution = _where(negative, rhs, solution)
            residual = _where(negative, _plus_scaled(rhs, -torch.ones_like(curvature), product), residual)
        stopped = stopped | negative
        step = torch.where(stopped, torch.zeros_like(curvature), _ratio(residual_sq, curvature))
        solution = _plus_scaled(solution, step, direction)
        residual = _plus_scaled(residual, -step, product)
        new_residual_sq = dot(residual, residual)
        momentum = _ratio(new_residual_sq, residual_sq)
        direction = _where(stopped, direction, _plus_scaled(residual, momentum, direction))
        residual_sq = new_residual_sq
        taken = taken + (~stopped).to(taken.dtype)
    relative = _ratio(residual_sq, rhs_sq).sqrt()
    return CGReport(solution, relative, taken, stopped)


def _where(condition: torch.Tensor, x: Tree, y: Tree) -> Tree:
    """``x`` where ``condition`` holds, else ``y``, for pytrees of the same structure (``condition`` a scalar)."""
    return tree_map(lambda x_i, y_i: torch.where(condition, x_i, y_i), x, y)


def _plus_scaled(x: Tree, scale: torch.Tensor, y: Tree) -> Tree:
    """``x + scale y`` for pytrees of the same structure."""
    return tree_map(lambda x_i, y_i: x_i + scale * y_i, x, y)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, or ``0`` where the denominator is ``0``."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, 1.0), 0.0)
