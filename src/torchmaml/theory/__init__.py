"""The convergence theory of MAML (Fallah, Mokhtari, Ozdaglar 2019) as measurements on a user's model.

- ``constants``: estimates of the smoothness ``L``, the Hessian Lipschitz constant ``rho`` and task gradient
  norms, from Hessian-vector products (never a formed Hessian).
- ``variances``: the task-gradient variance ``sigma^2`` and the per-example gradient and Hessian variances
  ``sigmã^2``, ``sigma_H^2`` (Hutchinson), by Monte Carlo over tasks and examples.
- ``assumptions``: ``estimate_constants``, every constant at a point with its error and the inner-rate checks.
- ``bounds``: the moment bounds of the stochastic meta-gradient and the iteration bound ``T(epsilon)``.
- ``step_size``: the theory-guided outer step ``beta_k = c / L_hat(w_k)``,
  ``L_hat(w) = 4L + 2 rho alpha E||grad f_j(w)||``.
- ``stationarity``: ``||grad F(w)||`` on a large fixed batch of tasks, with its standard error.
- ``families``, ``linear_tasks``, ``sinusoid_family``, ``reference``: task families whose ``grad F`` is known to
  high accuracy (linear regression in closed form, the sinusoid by quadrature).

The experiments behind ``docs/theory.md`` (the theory lab) use these measurements; they live in the repository
under ``experiments/theory_lab``, outside the package.
"""

from torchmaml.theory.assumptions import AssumptionCheck, TheoryConstants, estimate_constants
from torchmaml.theory.constants import (
    estimate_hessian_lipschitz,
    estimate_smoothness,
    smoothness_with_error,
    task_gradient_norms,
)
from torchmaml.theory.linear_tasks import LinearRegressionTasks
from torchmaml.theory.sinusoid_family import SinusoidFamily
from torchmaml.theory.stationarity import meta_gradient_norm
from torchmaml.theory.statistics import Estimate
from torchmaml.theory.step_size import STEP_SIZE_CONSTANTS, TheoryStepSize, theory_step_size

__all__ = [
    "STEP_SIZE_CONSTANTS",
    "AssumptionCheck",
    "Estimate",
    "LinearRegressionTasks",
    "SinusoidFamily",
    "TheoryConstants",
    "TheoryStepSize",
    "estimate_constants",
    "estimate_hessian_lipschitz",
    "estimate_smoothness",
    "meta_gradient_norm",
    "smoothness_with_error",
    "task_gradient_norms",
    "theory_step_size",
]
