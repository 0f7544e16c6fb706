"""HF-MAML: MAML with the Hessian-vector product replaced by a difference of two gradients.

Fallah, Mokhtari, Ozdaglar (2020), "On the convergence theory of gradient-based model-agnostic
meta-learning algorithms" (AISTATS; arXiv:1908.10400, 2019), Algorithm HF-MAML. For task ``i`` with inner
rate ``alpha``, support set ``D_in``, query set ``D_o`` and Hessian batch ``D_h`` (the batch's
``hessian_x``/``hessian_y`` when present, else ``D_in``), one inner step gives

    v   = grad f_i(w - alpha grad f_i(w; D_in); D_o)
    d   = [grad f_i(w + delta v; D_h) - grad f_i(w - delta v; D_h)] / (2 delta)     ~= H_i(w; D_h) v
    G_i = v - alpha d.

Only first-order autograd is used: every gradient is taken at a fixed point, no graph is kept through the
inner step and no second derivative is ever formed, so it works for any model whose gradient does, with
the memory of first-order MAML. The central difference is exact when ``f_i`` is quadratic; for a smooth
``f_i`` its error is ``O(delta^2)``, and at most ``rho delta ||v||^2 / 2`` when the Hessian is
``rho``-Lipschitz.

Networks with ReLU or max-pooling have a gradient that jumps where a unit changes sign or a pooling
window changes its maximum. A displacement ``delta ||v||`` that crosses such kinks adds their jumps to the
difference: an error of order one that does not shrink with ``delta`` until ``delta ||v||`` is below the
distance to the nearest kink (the exact products of ``unrolled``/``three_batch`` use the Hessian of the
linear pieces instead). Measured on ``conv4`` (float64, 2 tasks, 1 step): relative error 1.2 to 6 for
``delta`` from ``1e-1`` to ``1e-4``, ``1e-7`` at ``1e-5``; the same net with softplus and average pooling:
``4e-5`` at ``1e-3``, shrinking as ``delta^2``. In float32, ``delta = 1e-3`` balances truncation against
round-off (``3e-4`` on the smooth net). Prefer smooth activations with this estimator.

Step size ``delta`` (the options are mutually exclusive):

- ``delta``: a fixed ``delta > 0`` (``1e-3`` when neither option is given);
- ``rho``: the paper's rule ``delta_i = 1 / (6 rho alpha ||v||)``, with ``rho`` an estimate of the
  Lipschitz constant of the Hessian; this keeps the error of ``alpha d`` below ``||v|| / 12``;
- ``delta = "theory"``: the paper's rule with ``rho`` estimated along the run: before every ``rho_every``-th
  meta-step (counted by ``MetaLearner.meta_gradient_calls``) ``torchmaml.theory.constants.
  estimate_hessian_lipschitz`` (8 random direction pairs, radius ``1e-2``, two Hessian-vector products per
  pair and task) runs on that meta-step's tasks and the maximum over tasks becomes ``rho``; the value in use is
  logged as the metric ``hf_rho``. Cost: 16 Hessian-vector products per task per estimate, a few meta-gradients'
  worth, so ``rho_every = 100`` adds a few percent (measured in docs/results/estimators.md). It is a lower bound
  on ``rho`` (a larger ``delta``); it needs double backward (not the first-order-only property of HF-MAML) at
  the estimates only.

With ``K`` inner steps the same difference replaces each Hessian-vector product of the exact
reverse-mode product (``three_batch``): going backwards from ``v_K = grad f_i(w_K; D_o)``,

    v_s = v_{s+1} - [grad f_i(w_s + h u_s; D_h) - grad f_i(w_s - h u_s; D_h)] / (2 h),   u_s = alpha_s ⊙ v_{s+1},

so each step's product is approximated at that step's point along that step's adjoint; the step ``h`` is
chosen so that the displacement ``h u_s`` has the length ``delta ||v_{s+1}||`` of the one-step formula
(``h u_s = delta v_{s+1}`` for a scalar rate), with the rule's ``delta`` computed from ``v_{s+1}``. The
errors of the ``K`` differences add up; they are not corrected. Learned inner rates get the first-order
rate gradient ``-sum_s <v_{s+1}, d(alpha_s ⊙ g_s)/d lrs>`` (see ``three_batch``).

Usage::

    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.4, estimator="hessian_free",
                          estimator_options={"delta": 1e-3})       # or {"rho": 1.0} for the paper's rule

or on the command line ``--set estimator=hessian_free --set 'estimator_options={delta=1e-3}'``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from torchmaml.distributed import gather_tasks
from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task
from torchmaml.estimators.hvp import ScalarFunction, finite_difference_hvp, norm
from torchmaml.estimators.three_batch import reverse_mode_estimate
from torchmaml.functional import Params

if TYPE_CHECKING:
    from torchmaml.learner import MetaLearner
    from torchmaml.tasks import TaskBatch

DEFAULT_DELTA = 1e-3
THEORY = "theory"


class RhoEstimate:
    """The Hessian-Lipschitz estimate ``delta = "theory"`` uses: a float64 scalar tensor (``None`` before the first
    estimate), updated in place, so a compiled meta-gradient reads the new value without recompiling."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def set(self, value: float) -> None:
        if self.value is None:
            self.value = torch.tensor(value, dtype=torch.float64)
        else:
            self.value.fill_(value)


@dataclass(frozen=True)
class HessianFree(Estimator):
    """The HF-MAML gradient of one task (see the module docstring).

    Args:
        delta: the fixed finite-difference step (``> 0``), or ``"theory"`` for the paper's step with ``rho``
            estimated every ``rho_every`` meta-steps; ``1e-3`` when ``rho`` is not given either.
        rho: use the paper's step ``1 / (6 rho alpha ||v||)`` with this Hessian-Lipschitz estimate (``> 0``).
        rho_every: with ``delta = "theory"``, meta-steps between estimates of ``rho`` (``>= 1``).
    """

    differentiates_inner_loop: ClassVar[bool] = True
    supports_step_weights: ClassVar[bool] = True
    theory_step_constant: ClassVar[float | None] = 1 / 25
    hessian_set: ClassVar[str] = "optional"

    delta: float | str | None = None
    rho: float | None = None
    rho_every: int = 100
    estimate: RhoEstimate = field(default_factory=RhoEstimate, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.delta is not None and self.rho is not None:
            raise ConfigError("estimator_options: 'hessian_free' takes delta or rho, not both")
        for name in ("delta", "rho"):
            value = getattr(self, name)
            if value is not None and value != THEORY and not _positive_number(value):
                choices = "a finite number > 0" + (' or "theory"' if name == "delta" else "")
                raise ConfigError(f"estimator_options: {name} must be {choices}, got {value!r}")
        if isinstance(self.rho_every, bool) or not isinstance(self.rho_every, int) or self.rho_every < 1:
            raise ConfigError(f"estimator_options: rho_every must be an integer >= 1, got {self.rho_every!r}")
        if self.delta is None and self.rho is None:
            object.__setattr__(self, "delta", DEFAULT_DELTA)

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        grads, metrics = reverse_mode_estimate(problem, meta, task, self.finite_difference_curvature)
        if self.delta == THEORY:
            metrics["hf_rho"] = torch.zeros_like(metrics["loss_after"]) + self.current_rho()
        return grads, metrics

    def prepare(self, learner: MetaLearner, batch: TaskBatch) -> None:
        """With ``delta = "theory"``: estimate ``rho`` on ``batch`` (maximum over its tasks; with a process group,
        over every rank's tasks) before the first and every ``rho_every``-th meta-step."""
        if self.delta != THEORY or (self.estimate.value is not None and learner.meta_gradient_calls % self.rho_every):
            return
        from torchmaml.theory.constants import estimate_hessian_lipschitz  # theory builds on the learner

        values = estimate_hessian_lipschitz(learner, batch)
        if learner.process_group is not None:  # every rank uses the maximum over all ranks' tasks
            values = gather_tasks(values, learner.process_group)
        self.estimate.set(float(values.max()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The current estimate of ``rho`` (a resumed run continues with it, on the same schedule)."""
        return {"rho": self.estimate.value.clone()} if self.estimate.value is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "rho" in state:
            self.estimate.set(float(state["rho"]))

    def current_rho(self) -> torch.Tensor:
        """The Hessian-Lipschitz constant the paper's rule uses: ``rho``, or the latest estimate (a scalar tensor)."""
        if self.delta != THEORY:
            return torch.tensor(max(self.rho, torch.finfo(torch.float64).tiny), dtype=torch.float64)
        if self.estimate.value is None:
            raise ConfigError(
                "estimator 'hessian_free' with delta 'theory' has no estimate of rho yet: compute meta-gradients "
                "through MetaLearner.backward/meta_step (which estimate it), or give rho"
            )
        return self.estimate.value.clamp_min(torch.finfo(torch.float64).tiny)

    def finite_difference_curvature(
        self, loss: ScalarFunction, point: Params, adjoint: Params, vector: Params
    ) -> Params:
        """``H(point) u`` by a central difference along ``u = vector = alpha ⊙ adjoint``."""
        return finite_difference_hvp(loss, point, vector, self.difference_step(norm(adjoint), norm(vector)))

    def difference_step(self, adjoint_norm: torch.Tensor, vector_norm: torch.Tensor) -> torch.Tensor:
        """``h`` with ``h ||u|| = delta ||v||``; ``delta = 1 / (6 rho alpha ||v||)`` with ``alpha = ||u|| / ||v||``.

        When ``u = 0`` both gradients are taken at the same point and any ``h`` gives the exact ``0``; ``h = 1``
        then avoids ``0 / 0``.
        """
        safe_norm = vector_norm.clamp_min(torch.finfo(vector_norm.dtype).tiny)
        inverse_rate = adjoint_norm / safe_norm
        if self.delta is not None and self.delta != THEORY:
            step = self.delta * inverse_rate
        else:
            step = inverse_rate / (6 * self.current_rho().to(safe_norm.dtype) * safe_norm)
        return torch.where(vector_norm > 0, step, torch.ones_like(step))


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
