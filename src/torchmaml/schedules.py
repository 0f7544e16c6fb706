"""MAML++ training schedules (Antoniou, Edwards, Storkey 2018), as pure functions of the iteration.

- Multi-step loss: for the first ``anneal_iterations`` the meta-objective is ``sum_s v_s L(w_s; D_o)`` over
  the inner steps. Weights start uniform (``1/K``) and the non-final ones decay linearly to ``0.03/K``
  while the final one grows to ``1 - (K-1) 0.03/K``, as in the authors' code; afterwards only the final
  step's loss counts (``None``).
- Derivative-order annealing: first-order MAML for the first ``first_order_iterations``, then the run's
  estimator (exact second order by default).
"""

from __future__ import annotations

MIN_NON_FINAL_WEIGHT = 0.03


def multi_step_weights(iteration: int, steps: int, anneal_iterations: int) -> tuple[float, ...] | None:
    """The multi-step loss weights ``v_1..v_K`` at ``iteration`` (1-based); ``None`` when switched off."""
    if anneal_iterations <= 0 or iteration > anneal_iterations or steps < 1:
        return None
    progress = (iteration - 1) / anneal_iterations
    floor = MIN_NON_FINAL_WEIGHT / steps
    non_final = max((1.0 - progress) / steps, floor)
    final = min((1.0 + progress * (steps - 1)) / steps, 1.0 - (steps - 1) * floor)
    return (*([non_final] * (steps - 1)), final)


def uses_first_order(iteration: int, first_order_iterations: int) -> bool:
    """Whether ``iteration`` (1-based) falls in the first-order warm-up."""
    return iteration <= first_order_iterations
