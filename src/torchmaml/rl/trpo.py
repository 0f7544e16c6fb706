"""Trust-region policy optimisation's update on a flat parameter vector (Schulman et al. 2015).

Maximise a surrogate ``L(w)`` subject to ``KL(w_old, w) <= delta``. With the gradient ``g = grad L`` and the
Fisher matrix ``F`` (the Hessian of the mean KL at ``w_old``), the natural-gradient direction ``s = F^{-1} g``
comes from ``cg_iterations`` of conjugate gradient (``torchmaml.linalg``) on Fisher-vector products
``v -> F v + damping v``, the full step ``beta s`` with ``beta = sqrt(2 delta / s^T F s)`` reaches the KL limit
under the quadratic model, and a backtracking line search shrinks it by ``backtrack_ratio`` until the surrogate improves
and the measured KL is within ``delta`` (rllab's ``ConjugateGradientOptimizer``, used by the MAML paper). If no
step passes, the parameters stay where they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from torchmaml.linalg import conjugate_gradient

Vector = torch.Tensor
CG_TOLERANCE = 1e-10  # conjugate gradient stops once the squared residual norm is below it


@dataclass(frozen=True)
class TRPOResult:
    """The accepted step (zeros if none), the surrogate improvement and KL it achieved, and how many times the
    full step was shrunk before it was accepted."""

    step: Vector
    improvement: float
    kl: float
    backtracks: int
    accepted: bool


def trpo_step(
    gradient: Vector,
    fisher_vector_product: Callable[[Vector], Vector],
    evaluate: Callable[[Vector], tuple[float, float]],
    max_kl: float = 0.01,
    cg_iterations: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
) -> TRPOResult:
    """One TRPO update. ``evaluate(step)`` returns ``(L(w_old + step) - L(w_old), KL(w_old, w_old + step))``."""
    direction = conjugate_gradient(fisher_vector_product, gradient, cg_iterations, tolerance=CG_TOLERANCE)
    curvature = direction @ fisher_vector_product(direction)
    if not bool(torch.isfinite(curvature)) or curvature <= 0:
        return TRPOResult(torch.zeros_like(gradient), 0.0, 0.0, 0, False)
    full_step = torch.sqrt(2 * max_kl / curvature) * direction
    for backtracks in range(max_backtracks):
        step = full_step * backtrack_ratio**backtracks
        improvement, kl = evaluate(step)
        if improvement > 0 and kl <= max_kl:
            return TRPOResult(step, improvement, kl, backtracks, True)
    return TRPOResult(torch.zeros_like(gradient), 0.0, 0.0, max_backtracks, False)
