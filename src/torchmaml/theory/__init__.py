"""The convergence theory of MAML (Fallah, Mokhtari, Ozdaglar 2019) as measurements on a user's model.

- ``constants``: estimates of the smoothness ``L``, the Hessian Lipschitz constant ``rho`` and task gradient
  norms, from Hessian-vector products (never a formed Hessian).
- ``step_size``: the theory-guided outer step ``beta_k = c / L_hat(w_k)``,
  ``L_hat(w) = 4L + 2 rho alpha E||grad f_j(w)||``.
- ``stationarity``: ``||grad F(w)||`` on a large fixed batch of tasks, with its standard error.
"""

from torchmaml.theory.constants import (
    estimate_hessian_lipschitz,
    estimate_smoothness,
    task_gradient_norms,
)
from torchmaml.theory.stationarity import meta_gradient_norm
from torchmaml.theory.step_size import STEP_SIZE_CONSTANTS, TheoryStepSize, theory_step_size

__all__ = [
    "STEP_SIZE_CONSTANTS",
    "TheoryStepSize",
    "estimate_hessian_lipschitz",
    "estimate_smoothness",
    "meta_gradient_norm",
    "task_gradient_norms",
    "theory_step_size",
]
