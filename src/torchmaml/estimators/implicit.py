"""iMAML: the meta-gradient of a proximally regularised inner problem, by the implicit function theorem.

Rajeswaran, Finn, Kakade, Levine (2019), "Meta-Learning with Implicit Gradients" (NeurIPS). For task ``i``
with support set ``D_in`` and query set ``D_o`` the inner problem is

    phi_i(w) = argmin_phi  f_i(phi; D_in) + lambda/2 ||phi - w||^2,

approximated by ``K = problem.steps`` gradient steps from ``phi_0 = w`` with the problem's inner rate,

    phi_{s+1} = phi_s - alpha_s (grad f_i(phi_s; D_in) + lambda (phi_s - w)),

taken without a graph (``w`` is a constant there). At the minimiser ``d phi_i / d w = (I + H_i/lambda)^{-1}``
with ``H_i = H_i(phi_i; D_in)``, so the meta-gradient is

    G_i = (I + H_i / lambda)^{-1} grad f_i(phi_i; D_o),

which ``cg_iterations`` steps of conjugate gradient (``torchmaml.linalg``, no tolerance: a fixed number of
steps, so it runs under ``vmap``) solve from ``x = 0`` with one Hessian-vector product
each (``(1 + damping) I + H_i / lambda`` when ``damping > 0``; damping helps when ``H_i`` has negative
eigenvalues below ``-lambda``). Only the current ``phi_s`` is kept: memory does not depend on ``K``.

The estimate is exact only when ``phi_K`` is the minimiser and CG has converged; ``lambda`` trades how far
``phi`` may move from ``w`` (large ``lambda``: close to ``w``) against the conditioning of the system.
The inner rates get a zero gradient (the minimiser does not depend on the path to it), and MAML++'s
multi-step loss is refused. When the inner loop adapts only some parameters (ANIL), those parameters
get the CG solution ``x`` and the others ``w_b`` the implicit gradient through the minimiser,
``grad_b f_i(phi_i; D_o) - H_i[b, adapted] x / lambda``.

Usage::

    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.1, inner_steps=10, estimator="implicit",
                          estimator_options={"lam": 2.0, "cg_iterations": 5})

or on the command line ``--set estimator=implicit --set 'estimator_options={lam=2.0, cg_iterations=5}'``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.func import grad_and_value

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task
from torchmaml.estimators.hvp import hessian_vector_product, partial_grad
from torchmaml.functional import Params
from torchmaml.inner import sgd_step, step_lr
from torchmaml.linalg import conjugate_gradient


@dataclass(frozen=True)
class Implicit(Estimator):
    """The iMAML gradient of one task (see the module docstring).

    Args:
        lam: the proximal regularisation strength ``lambda > 0``.
        cg_iterations: conjugate-gradient iterations (``>= 1``), one Hessian-vector product each.
        damping: added to the diagonal of the system ``I + H / lambda`` (``>= 0``).
    """

    lam: float = 1.0
    cg_iterations: int = 5
    damping: float = 0.0

    def __post_init__(self) -> None:
        if not _finite_number(self.lam) or not self.lam > 0:
            raise ConfigError(f"estimator_options: lam must be a finite number > 0, got {self.lam!r}")
        if isinstance(self.cg_iterations, bool) or not isinstance(self.cg_iterations, int) or self.cg_iterations < 1:
            raise ConfigError(f"estimator_options: cg_iterations must be an integer >= 1, got {self.cg_iterations!r}")
        if not _finite_number(self.damping) or not self.damping >= 0:
            raise ConfigError(f"estimator_options: damping must be a finite number >= 0, got {self.damping!r}")

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        if problem.step_weights:
            raise ConfigError("estimator 'implicit' has no multi-step loss; leave step_weights unset")

        def support_loss(params: Params) -> torch.Tensor:
            return problem.loss(params, task["support_x"], task["support_y"])

        def query_loss(params: Params) -> torch.Tensor:
            return problem.loss(params, task["query_x"], task["query_y"])

        start = {name: p.detach() for name, p in meta["params"].items()}
        adapted = [name for name in start if problem.adapted is None or name in problem.adapted]
        rates = problem.rates(meta["lrs"])
        phi = start
        for step in range(problem.steps):
            support_grad = partial_grad(support_loss, phi, adapted)
            proximal_grad = {name: g + self.lam * (phi[name] - start[name]) for name, g in support_grad.items()}
            phi = {**phi, **sgd_step({name: phi[name] for name in adapted}, proximal_grad, step_lr(rates, step))}

        def padded(vector: Params) -> Params:
            return {name: vector[name] if name in vector else torch.zeros_like(p) for name, p in phi.items()}

        def system(vector: Params) -> Params:
            curved = hessian_vector_product(support_loss, phi, padded(vector))
            return {name: (1 + self.damping) * v + curved[name] / self.lam for name, v in vector.items()}

        query_grad, loss_after = grad_and_value(query_loss)(phi)
        solution = conjugate_gradient(system, {name: query_grad[name] for name in adapted}, self.cg_iterations)
        grads = {**query_grad, **solution}
        fixed = [name for name in phi if name not in solution]
        if fixed:  # parameters the inner loop holds fixed still move the minimiser
            coupling = hessian_vector_product(support_loss, phi, padded(solution))
            grads.update({name: query_grad[name] - coupling[name] / self.lam for name in fixed})

        metrics = {"loss_after": loss_after}
        if problem.track_loss_before:
            with torch.no_grad():
                metrics["loss_before"] = query_loss(start)
        lr_grads = {name: torch.zeros_like(t) for name, t in meta["lrs"].items()}
        return {"params": grads, "lrs": lr_grads}, metrics


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
