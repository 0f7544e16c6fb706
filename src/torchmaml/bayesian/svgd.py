"""Stein variational gradient descent (Liu & Wang 2016) as an inner update of a particle ensemble.

``M`` particles ``theta_1..theta_M`` (each a full parameter set, stacked on a leading particle axis) approximate
the task posterior ``p(theta | D) ∝ p(D | theta) p(theta)``. One SVGD step moves every particle along

    phi(theta_i) = (1/M) sum_j [ k(theta_j, theta_i) grad log p(theta_j | D) + grad_{theta_j} k(theta_j, theta_i) ],
    theta_i <- theta_i + epsilon * phi(theta_i),

the kernel-smoothed scores (attraction to high posterior density) plus the kernel's gradient (repulsion between
particles, which keeps them spread like the posterior). The kernel is the RBF kernel

    k(a, b) = exp(-||a - b||^2 / h),    h = median{ ||theta_i - theta_j||^2 : i < j } / log(M + 1)

with the median-heuristic bandwidth of Liu & Wang's reference code (each particle's own kernel weight ``1``
equals the summed weight of the others when distances are at the median). For the RBF kernel the repulsion is
``sum_j grad_{theta_j} k(theta_j, theta_i) = (2/h) sum_j k_ij (theta_i - theta_j)``. With ``M = 1`` the kernel is
``[[1]]``, the repulsion vanishes and the step is gradient ascent on the log posterior.

The score of particle ``j`` is ``grad log p(D | theta_j) + grad log p(theta_j)``; with the ensemble's loss
``sum_m (1/N) sum_n -log p(y_n | x_n, theta_m)`` (a ``torchmaml.bayesian`` likelihood) its gradient ``g_j`` with
respect to particle ``j`` gives ``grad log p(D | theta_j) = -N g_j``, and a Gaussian prior ``N(0, s^2 I)`` adds
``-theta_j / s^2``. The bandwidth is part of the computation: an exact meta-gradient differentiates through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from torchmaml.errors import ConfigError
from torchmaml.functional import Params

MIN_BANDWIDTH = 1e-12  # coinciding particles: no division by zero (the kernel is then 1 between them)


def flatten_particles(tree: Params) -> torch.Tensor:
    """The tensors of ``tree`` (each ``[M, ...]``) as one ``[M, D]`` matrix, in ``tree``'s order."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tree.values()], dim=1)


def unflatten_particles(flat: torch.Tensor, like: Params) -> Params:
    """``flatten_particles``' inverse: ``[M, D]`` back to tensors shaped like those of ``like``."""
    sizes = [t[0].numel() for t in like.values()]
    parts = torch.split(flat, sizes, dim=1)
    return {name: part.reshape(t.shape) for (name, t), part in zip(like.items(), parts, strict=True)}


def squared_distances(flat: torch.Tensor) -> torch.Tensor:
    """``[M, M]`` matrix of ``||theta_i - theta_j||^2`` (exact zeros on the diagonal)."""
    differences = flat.unsqueeze(1) - flat.unsqueeze(0)
    return differences.pow(2).sum(-1)


def median_bandwidth(distances: torch.Tensor) -> torch.Tensor:
    """``h = median{d_ij : i < j} / log(M + 1)`` from the squared distances ``d``; ``1`` for a single particle
    (where no kernel weight between distinct particles exists). Bounded below by ``MIN_BANDWIDTH``."""
    count = distances.shape[0]
    if count == 1:
        return torch.ones((), dtype=distances.dtype, device=distances.device)
    rows, columns = torch.triu_indices(count, count, offset=1, device=distances.device)
    ordered = distances[rows, columns].sort().values
    pairs = ordered.shape[0]
    median = (ordered[(pairs - 1) // 2] + ordered[pairs // 2]) / 2  # the two middle values' midpoint for an even count
    return (median / math.log(count + 1)).clamp(min=MIN_BANDWIDTH)


def svgd_direction(flat: torch.Tensor, scores: torch.Tensor, bandwidth: torch.Tensor | None = None) -> torch.Tensor:
    """``phi(theta_i)`` for every particle (module docstring): ``flat`` and ``scores`` are ``[M, D]``; the
    bandwidth defaults to the median heuristic."""
    distances = squared_distances(flat)
    h = median_bandwidth(distances) if bandwidth is None else bandwidth
    kernel = torch.exp(-distances / h)
    attraction = kernel @ scores
    repulsion = (2.0 / h) * (kernel.sum(1, keepdim=True) * flat - kernel @ flat)
    return (attraction + repulsion) / flat.shape[0]


@dataclass(frozen=True)
class SVGD:
    """The SVGD inner update of a particle ensemble: the step ``theta <- theta - epsilon * d`` with
    ``d = -phi(theta)`` (module docstring), ``epsilon`` the inner rate.

    Use it as ``MetaLearner(Particles(model, M), loss=..., inner_update=SVGD(prior_std=1.0))``: the inner loop then
    adapts the particles by SVGD on the posterior whose likelihood is the ensemble's loss and whose prior is
    ``N(0, prior_std^2)`` on every adapted coordinate (``None``: a flat prior). Every adapted parameter must carry
    the particle axis first (``Particles``' parameters do).
    """

    prior_std: float | None = 1.0

    def __post_init__(self) -> None:
        if self.prior_std is not None and not (isinstance(self.prior_std, (int, float)) and self.prior_std > 0):
            raise ConfigError(f"prior_std: must be a number > 0 or None (a flat prior), got {self.prior_std!r}")

    def __call__(self, params: Params, grads: Params, examples: int) -> Params:
        """The step direction ``d`` for the particles ``params`` whose ensemble-loss gradients are ``grads``, on a
        support set of ``examples`` examples."""
        scores = {name: -examples * grads[name] for name in params}
        if self.prior_std is not None:
            scores = {name: s - params[name] / self.prior_std**2 for name, s in scores.items()}
        phi = svgd_direction(flatten_particles(params), flatten_particles(scores))
        return {name: -value for name, value in unflatten_particles(phi, params).items()}
