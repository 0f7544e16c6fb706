"""Linear-regression tasks with Gaussian features: every quantity of MAML's analysis in closed form.

Task ``i`` has a type ``k`` (uniform over ``K`` types), true weights ``w*_i ~ N(wbar_k, tau^2 I)`` and data
``x ~ N(0, Sigma_k)``, ``y = x^T w*_i + xi`` with ``xi ~ N(0, s^2)``. With the per-example loss
``l(w; x, y) = (x^T w - y)^2`` (``F.mse_loss`` of a bias-free ``nn.Linear(d, 1)``) and ``A_k = 2 Sigma_k``:

    f_i(w) = (w - w*_i)^T Sigma_k (w - w*_i) + s^2,        grad f_i(w) = A_k (w - w*_i),     Hessian A_k.

``K`` inner steps of rate ``alpha`` map ``w - w*_i`` to ``P_k (w - w*_i)`` with ``P_k = (I - alpha A_k)^K``, so with
``M_k = P_k A_k P_k`` and ``m_k = w - wbar_k``

    F(w)      = E_k [ m_k^T M_k m_k + tau^2 tr M_k ] / 2 + s^2,       grad F(w) = E_k M_k m_k,
    grad F_i  = M_k (w - w*_i)                                        (the exact meta-gradient of task i).

First-order MAML follows ``E_k A_k P_k m_k`` instead; its fixed point ``w_FO`` differs from MAML's minimiser
when the types' means differ, and ``||grad F(w_FO)||`` is the floor it cannot go below. The constants of the
analysis at ``w`` (averages over tasks; the per-example variances use Isserlis' theorem for Gaussian ``x``):

    L          = max_k lambda_max(A_k),     rho = 0,
    sigma^2    = E_k [ ||A_k m_k||^2 + tau^2 tr A_k^2 ] - ||E_k A_k m_k||^2,
    sigmã^2    = E_k 4 [ (m_k^T S m_k + tau^2 tr S) tr S + m_k^T S^2 m_k + tau^2 tr S^2 + s^2 tr S ],  S = Sigma_k,
    sigma_H^2  = E_k 4 [ (tr S)^2 + tr S^2 ]          (E||x x^T - S||_F^2 = (tr S)^2 + tr S^2).

With the Hessian taken on the support set (``unrolled``) and one inner step, the estimator's bias is exactly

    E[G_i] - grad F(w) = alpha^2 (8 / D_in) E_k [ (tr(S^2) S + S^3) m_k ],

and zero when the Hessian batch is independent (``three_batch``, ``hessian_free``): the inner gradient enters
linearly, so its noise averages out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from torchmaml.errors import ConfigError
from torchmaml.tasks import TaskBatch


@dataclass(frozen=True, eq=False)
class LinearRegressionTasks:
    """``K`` task types with feature covariances ``covariances[k]`` (``[K, d, d]``) and mean weights ``means[k]``
    (``[K, d]``); a ``ReferenceFamily``. Task parameters are rows ``(k, w*_i)`` of a ``[B, 1 + d]`` tensor."""

    covariances: torch.Tensor
    means: torch.Tensor
    task_std: float = 0.5
    noise_std: float = 0.5
    support_size: int = 10
    query_size: int = 10
    hessian_size: int = 0

    def __post_init__(self) -> None:
        if self.covariances.dim() != 3 or self.covariances.shape[1] != self.covariances.shape[2]:
            raise ConfigError(f"covariances: need shape [K, d, d], got {tuple(self.covariances.shape)}")
        if self.means.shape != self.covariances.shape[:2]:
            raise ConfigError(f"means: need shape {tuple(self.covariances.shape[:2])}, got {tuple(self.means.shape)}")
        for name in ("support_size", "query_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hessian_size < 0:
            raise ConfigError(f"hessian_size: must be >= 0, got {self.hessian_size}")
        if self.task_std < 0 or self.noise_std < 0:
            raise ConfigError("task_std and noise_std must be >= 0")
        roots, info = torch.linalg.cholesky_ex(self.covariances)
        if bool((info != 0).any()):
            raise ConfigError("covariances: every covariance must be symmetric positive definite")
        object.__setattr__(self, "_roots", roots)

    @property
    def dim(self) -> int:
        return self.covariances.shape[-1]

    @property
    def num_types(self) -> int:
        return self.covariances.shape[0]

    # -- sampling (the TaskSource side) ---------------------------------------------------------------

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """``[num_tasks, 1 + d]``: a uniform type ``k`` and ``w*_i ~ N(wbar_k, tau^2 I)`` per task."""
        types = torch.randint(self.num_types, (num_tasks,), generator=generator)
        noise = torch.randn(num_tasks, self.dim, generator=generator, dtype=self.means.dtype)
        return torch.cat([types[:, None].to(self.means.dtype), self.means[types] + self.task_std * noise], dim=1)

    def batch_for(
        self, tasks: torch.Tensor, support_size: int, query_size: int, hessian_size: int, generator: torch.Generator
    ) -> TaskBatch:
        """Independent support, query and (when ``hessian_size > 0``) Hessian sets for the given tasks."""
        sets = [self._draw(tasks, size, generator) for size in (support_size, query_size)]
        if hessian_size > 0:
            sets.append(self._draw(tasks, hessian_size, generator))
        return TaskBatch(*(t for pair in sets for t in pair))

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """``num_tasks`` new tasks with this family's ``D_in``, ``D_o`` and ``D_h``."""
        tasks = self.sample_tasks(num_tasks, generator)
        return self.batch_for(tasks, self.support_size, self.query_size, self.hessian_size, generator)

    def _draw(self, tasks: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        types, weights = tasks[:, 0].long(), tasks[:, 1:]
        z = torch.randn(tasks.shape[0], size, self.dim, generator=generator, dtype=self.means.dtype)
        x = torch.einsum("bnd,bed->bne", z, self._roots[types])
        noise = torch.randn(tasks.shape[0], size, 1, generator=generator, dtype=self.means.dtype)
        return x, x @ weights[:, :, None] + self.noise_std * noise

    def population_batch(self, tasks: torch.Tensor) -> TaskBatch:
        """For each task the ``2d`` noise-free points ``x = ±sqrt(d) R e_j`` (``R R^T = Sigma_k``), whose empirical
        loss is ``f_i(w) - s^2`` exactly: support and query set alike."""
        types, weights = tasks[:, 0].long(), tasks[:, 1:]
        columns = math.sqrt(self.dim) * self._roots[types].transpose(1, 2)
        x = torch.cat([columns, -columns], dim=1)
        y = x @ weights[:, :, None]
        return TaskBatch(x, y, x, y)

    def quadrature(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per type the ``2d`` points ``w* = wbar_k ± tau sqrt(d) e_j`` with equal weights: exact for integrands of
        degree <= 3 in ``w*`` (``grad F_i`` is affine in ``w*``, ``F_i`` quadratic)."""
        offsets = self.task_std * math.sqrt(self.dim) * torch.eye(self.dim, dtype=self.means.dtype)
        offsets = torch.cat([offsets, -offsets])
        rows = [
            torch.cat([torch.full((2 * self.dim, 1), float(k), dtype=self.means.dtype), self.means[k] + offsets], 1)
            for k in range(self.num_types)
        ]
        tasks = torch.cat(rows)
        return tasks, torch.full((tasks.shape[0],), 1 / tasks.shape[0], dtype=self.means.dtype)

    def model(self, seed: int = 0) -> nn.Module:
        """``nn.Linear(d, 1, bias=False)`` in float64, starting at ``w = 0`` (``seed`` is not needed)."""
        model = nn.Linear(self.dim, 1, bias=False).to(self.means.dtype)
        nn.init.zeros_(model.weight)
        return model

    # -- closed forms ---------------------------------------------------------------------------------

    def hessians(self) -> torch.Tensor:
        """``A_k = 2 Sigma_k``: ``[K, d, d]``."""
        return 2 * self.covariances

    def _adapted(self, alpha: float, steps: int) -> torch.Tensor:
        eye = torch.eye(self.dim, dtype=self.means.dtype)
        return torch.linalg.matrix_power(eye - alpha * self.hessians(), steps)

    def meta_hessians(self, alpha: float, steps: int = 1) -> torch.Tensor:
        """``M_k = P_k A_k P_k`` with ``P_k = (I - alpha A_k)^steps``: ``[K, d, d]``."""
        adapted = self._adapted(alpha, steps)
        return adapted @ self.hessians() @ adapted

    def meta_objective(self, w: torch.Tensor, alpha: float, steps: int = 1) -> float:
        """``F(w) = E_k [m_k^T M_k m_k + tau^2 tr M_k] / 2 + s^2``."""
        m, meta = w - self.means, self.meta_hessians(alpha, steps)
        quadratic = torch.einsum("kd,kde,ke->k", m, meta, m) + self.task_std**2 * meta.diagonal(0, 1, 2).sum(-1)
        return float(quadratic.mean() / 2 + self.noise_std**2)

    def meta_gradient(self, w: torch.Tensor, alpha: float, steps: int = 1) -> torch.Tensor:
        """``grad F(w) = E_k M_k (w - wbar_k)``: ``[d]``."""
        return torch.einsum("kde,ke->d", self.meta_hessians(alpha, steps), w - self.means) / self.num_types

    def task_meta_gradients(self, w: torch.Tensor, tasks: torch.Tensor, alpha: float, steps: int = 1) -> torch.Tensor:
        """``grad F_i(w) = M_k (w - w*_i)`` for each task row: ``[B, d]``."""
        meta = self.meta_hessians(alpha, steps)[tasks[:, 0].long()]
        return torch.einsum("bde,be->bd", meta, w - tasks[:, 1:])

    def minimiser(self, alpha: float, steps: int = 1) -> torch.Tensor:
        """MAML's minimiser ``(E M_k)^{-1} E M_k wbar_k``."""
        meta = self.meta_hessians(alpha, steps)
        return torch.linalg.solve(meta.mean(0), torch.einsum("kde,ke->d", meta, self.means) / self.num_types)

    def first_order_fixed_point(self, alpha: float, steps: int = 1) -> torch.Tensor:
        """Where FO-MAML's expected update ``E_k A_k P_k (w - wbar_k)`` vanishes."""
        direction = self.hessians() @ self._adapted(alpha, steps)
        return torch.linalg.solve(direction.mean(0), torch.einsum("kde,ke->d", direction, self.means) / self.num_types)

    def first_order_floor(self, alpha: float, steps: int = 1) -> float:
        """``||grad F(w_FO)||``: the stationarity FO-MAML converges to, however small its step."""
        return float(self.meta_gradient(self.first_order_fixed_point(alpha, steps), alpha, steps).norm())

    def constants(self, w: torch.Tensor) -> dict[str, float]:
        """``L``, ``rho``, ``sigma^2``, ``sigmã^2`` and ``sigma_H^2`` at ``w`` (see the module docstring)."""
        hessians, m, cov, tau2 = self.hessians(), w - self.means, self.covariances, self.task_std**2
        task_grads = torch.einsum("kde,ke->kd", hessians, m)
        sigma_sq = (task_grads.square().sum(-1) + tau2 * hessians.square().sum((1, 2))).mean()
        sigma_sq = sigma_sq - task_grads.mean(0).square().sum()
        trace, trace_sq = cov.diagonal(0, 1, 2).sum(-1), cov.square().sum((1, 2))
        along = torch.einsum("kd,kde,ke->k", m, cov, m) + tau2 * trace
        along_sq = torch.einsum("kd,kde,ke->k", m, cov @ cov, m) + tau2 * trace_sq
        sigma_tilde_sq = 4 * (along * trace + along_sq + self.noise_std**2 * trace).mean()
        return {
            "smoothness": float(torch.linalg.eigvalsh(hessians).abs().max()),
            "hessian_lipschitz": 0.0,
            "task_gradient_variance": float(sigma_sq),
            "sample_gradient_variance": float(sigma_tilde_sq),
            "sample_hessian_variance": float((4 * (trace.square() + trace_sq)).mean()),
        }

    def unrolled_bias(self, w: torch.Tensor, alpha: float, support_size: int) -> torch.Tensor:
        """``E[G_i] - grad F(w)`` of one-step MAML with the Hessian on ``D_in``: ``alpha^2 (8/D_in) E_k (tr(S^2) S +
        S^3) m_k``, ``[d]``."""
        cov = self.covariances
        curvature = cov.square().sum((1, 2))[:, None, None] * cov + cov @ cov @ cov
        return alpha**2 * 8 / support_size * torch.einsum("kde,ke->d", curvature, w - self.means) / self.num_types


def lab_linear_family(dim: int = 10, task_std: float = 0.5, noise_std: float = 0.5) -> LinearRegressionTasks:
    """The lab's default: two task types with opposite mean weights (``±1``) and diagonal covariances with
    spectra from 1 to 0.1 and from 0.05 to 0.5 in reverse order, so Hessians and optima differ between types
    (which is what gives FO-MAML a floor). Float64, ``L = 2``."""
    spectrum = torch.logspace(0, -1, dim, dtype=torch.float64)
    covariances = torch.stack([torch.diag(spectrum), torch.diag(0.5 * spectrum.flip(0))])
    means = torch.stack([torch.ones(dim, dtype=torch.float64), -torch.ones(dim, dtype=torch.float64)])
    return LinearRegressionTasks(covariances, means, task_std=task_std, noise_std=noise_std)
