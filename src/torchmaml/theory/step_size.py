"""The theory-guided outer step size of Fallah, Mokhtari, Ozdaglar (2019).

With ``L`` the smoothness of the task losses, ``rho`` their Hessian Lipschitz constant and ``alpha`` the
inner rate, the meta-objective is locally smooth with constant

    L(w) = 4 L + 2 rho alpha E_j ||grad f_j(w)||,

and the outer step ``beta_k = c / L_hat(w_k)``, with ``L_hat`` estimated on an independent batch of tasks,
gives an epsilon-first-order stationary point in ``O(1/epsilon^2)`` iterations. The paper's constants:
``c = 1/12`` for MAML (``unrolled``, and ``three_batch``, the estimator of its analysis), ``1/18`` for
first-order MAML, ``1/25`` for HF-MAML.

``L`` and ``rho`` are local quantities: along a sinusoid run the estimated ``L`` grows about tenfold, so a
rule that estimates them once at the start takes steps that are too long later. With ``every = k`` they are
re-estimated before every ``k``-th step on a fresh independent batch (cost per refresh: 30 + 16
Hessian-vector products per task of ``batch_size``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchmaml.distributed import ProcessGroup, gather_tasks, shard
from torchmaml.estimators import ESTIMATORS
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch, TaskSource
from torchmaml.theory.constants import estimate_hessian_lipschitz, estimate_smoothness, task_gradient_norms

STEP_SIZE_CONSTANTS = {
    name: cls.theory_step_constant for name, cls in ESTIMATORS.items() if cls.theory_step_constant is not None
}


def theory_step_size(
    smoothness: float, hessian_lipschitz: float, inner_lr: float, mean_grad_norm: float, c: float
) -> float:
    """``beta = c / (4 L + 2 rho alpha mean_j ||grad f_j||)``."""
    local_smoothness = 4 * smoothness + 2 * hessian_lipschitz * inner_lr * mean_grad_norm
    return c / local_smoothness


class TheoryStepSize:
    """Sets the outer optimiser's rate to ``beta_k = c / L_hat(w_k)`` before every meta-step.

    ``L`` and ``rho`` are given, or estimated (``estimate_smoothness`` / ``estimate_hessian_lipschitz`` on
    ``batch_size`` tasks, maximum over tasks) at the first step and, with ``every = k > 0``, again before every
    ``k``-th step (``0``: only at the first); ``E||grad f_j(w_k)||`` is re-estimated each iteration. Every
    estimate uses an independent batch of tasks drawn from ``tasks`` with the rule's own generator.
    With a ``process_group`` each rank estimates its share of the batch and the per-task values are gathered.
    """

    def __init__(
        self,
        tasks: TaskSource,
        batch_size: int,
        c: float,
        seed: int,
        smoothness: float | None = None,
        hessian_lipschitz: float | None = None,
        process_group: ProcessGroup | None = None,
        every: int = 0,
    ) -> None:
        self.tasks, self.batch_size, self.c, self.process_group = tasks, batch_size, c, process_group
        self.generator = torch.Generator().manual_seed(seed)
        self.smoothness, self.hessian_lipschitz = smoothness, hessian_lipschitz
        self.estimated = (smoothness is None, hessian_lipschitz is None)  # which constants the rule estimates
        self.every, self.steps = every, 0

    def _batch(self, learner: MetaLearner) -> TaskBatch:
        """The next batch of the rule's own tasks (with a process group: this rank's share of it)."""
        batch = self.tasks.sample(self.batch_size, self.generator).to(device=next(learner.parameters()).device)
        return batch if self.process_group is None else shard(batch, self.process_group)

    def _per_task(
        self, estimate: Callable[[MetaLearner, TaskBatch], torch.Tensor], learner: MetaLearner
    ) -> torch.Tensor:
        """One value per task of the next batch, the ranks' shares joined (a process group shares the work)."""
        values = estimate(learner, self._batch(learner))
        return values if self.process_group is None else gather_tasks(values, self.process_group)

    def update(self, learner: MetaLearner, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Estimate what is missing or due, set every group's ``lr`` to ``beta_k``; return the values used."""
        due = self.every > 0 and self.steps % self.every == 0
        if self.smoothness is None or (due and self.estimated[0]):
            self.smoothness = float(self._per_task(estimate_smoothness, learner).max())
        if self.hessian_lipschitz is None or (due and self.estimated[1]):
            self.hessian_lipschitz = float(self._per_task(estimate_hessian_lipschitz, learner).max())
        self.steps += 1
        mean_norm = float(self._per_task(task_gradient_norms, learner).mean())
        alpha = learner.inner_rate_value()
        beta = theory_step_size(self.smoothness, self.hessian_lipschitz, alpha, mean_norm, self.c)
        for group in optimizer.param_groups:
            group["lr"] = beta
        return {"theory_L": self.smoothness, "theory_rho": self.hessian_lipschitz, "mean_grad_norm": mean_norm}

    def state_dict(self) -> dict:
        return {
            "smoothness": self.smoothness,
            "hessian_lipschitz": self.hessian_lipschitz,
            "generator": self.generator.get_state(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.smoothness, self.hessian_lipschitz = state["smoothness"], state["hessian_lipschitz"]
        self.steps = state.get("steps", 0)  # checkpoints from before re-estimation: counted from the resume
        self.generator.set_state(state["generator"])
