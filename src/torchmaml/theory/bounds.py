"""The bounds of MAML's analysis (Fallah, Mokhtari, Ozdaglar 2019) as functions of the measured constants.

For the stochastic meta-gradient ``G_i`` of one task (inner rate ``alpha <= 1/(6L)``, support size ``D_in``, query
size ``D_o``), with ``sigma^2`` the task-gradient variance and ``sigmã^2`` the per-example gradient variance:

    ||E[G_i]||^2 <= 2 ||grad F(w)||^2 + 0.08 sigmã^2 / D_in                                   (first moment)
    E||G_i||^2   <= 40 ||grad F(w)||^2 + 14 sigma^2 + sigmã^2 (2 / D_o + 1 / (6 D_in))          (second moment)

For the mean ``Gbar`` of ``B`` independent ``G_i``: ``E||Gbar||^2 = ||E G_i||^2 + (E||G_i||^2 - ||E G_i||^2) / B``,
at most the first-moment bound plus the second-moment bound over ``B``. With the theory-guided step size,
MAML reaches ``E||grad F|| <= epsilon`` within

    T(epsilon) = 1600 Delta (L + rho alpha (sigma + epsilon)) / epsilon^2

iterations, ``Delta = F(w_0) - inf F``.
"""

from __future__ import annotations


def first_moment_bound(grad_norm_sq: float, sample_gradient_variance: float, support_size: int) -> float:
    """``2 ||grad F||^2 + 0.08 sigmã^2 / D_in``: a bound on ``||E[G_i]||^2``."""
    return 2 * grad_norm_sq + 0.08 * sample_gradient_variance / support_size


def second_moment_bound(
    grad_norm_sq: float,
    task_gradient_variance: float,
    sample_gradient_variance: float,
    support_size: int,
    query_size: int,
) -> float:
    """``40 ||grad F||^2 + 14 sigma^2 + sigmã^2 (2 / D_o + 1 / (6 D_in))``: a bound on ``E||G_i||^2``."""
    noise = sample_gradient_variance * (2 / query_size + 1 / (6 * support_size))
    return 40 * grad_norm_sq + 14 * task_gradient_variance + noise


def batch_second_moment_bound(
    grad_norm_sq: float,
    task_gradient_variance: float,
    sample_gradient_variance: float,
    support_size: int,
    query_size: int,
    batch_size: int,
) -> float:
    """A bound on ``E||Gbar||^2`` for the mean of ``B`` tasks: first-moment bound + second-moment bound / ``B``."""
    first = first_moment_bound(grad_norm_sq, sample_gradient_variance, support_size)
    second = second_moment_bound(
        grad_norm_sq, task_gradient_variance, sample_gradient_variance, support_size, query_size
    )
    return first + second / batch_size


def iteration_bound(
    gap: float, smoothness: float, hessian_lipschitz: float, inner_lr: float, sigma: float, epsilon: float
) -> float:
    """``T = 1600 Delta (L + rho alpha (sigma + epsilon)) / epsilon^2``."""
    return 1600 * gap * (smoothness + hessian_lipschitz * inner_lr * (sigma + epsilon)) / epsilon**2
