"""iMAML: the meta-gradient of a proximally regularised inner problem, by the implicit function theorem.

Rajeswaran, Finn, Kakade, Levine (2019), "Meta-Learning with Implicit Gradients" (NeurIPS). For task ``i``
with support set ``D_in`` and query set ``D_o`` the inner problem is

    phi_i(w) = argmin_phi  P(phi) = f_i(phi; D_in) + lambda/2 ||phi - w||^2.

At the minimiser ``d phi_i / d w = (I + H_i/lambda)^{-1}`` with ``H_i = H_i(phi_i; D_in)``, so the
meta-gradient is

    G_i = (I + H_i / lambda)^{-1} grad f_i(phi_i; D_o).

Both halves are solved only approximately, and the estimate is as good as the two solves:

**The inner problem** (``solver``). ``"backtracking"`` (the default) runs gradient descent on ``P`` from
``phi_0 = w`` until the relative stationarity residual ``||grad P(phi)|| / ||grad P(w)||`` is at most
``tolerance``, or ``solver_steps`` steps were tried. Each step tries ``phi - t grad P(phi)`` and keeps it only
if it passes Armijo's test ``P(phi - t g) <= P(phi) - 1e-4 t ||g||^2``: then ``t`` doubles (up to ``1/lambda``,
the step that solves the proximal term alone), otherwise ``phi`` stays and ``t`` halves. So ``P`` never
increases, whatever the inner rate; the first trial step is the problem's inner rate. (Function values limit
the attainable residual to about the square root of the dtype's precision: ``tolerance`` below ``1e-7`` in
float64, ``1e-3`` in float32, is not reached.) ``"fixed"`` takes
``problem.steps`` plain steps ``phi_{s+1} = phi_s - alpha_s grad P(phi_s)`` at the inner rates (the original
recipe: with a large ``alpha`` it can increase ``P``; with a small one it stops far from ``phi_i``). Under
``vmap`` every task runs all ``solver_steps`` trials (converged tasks stop moving); one task at a time
(strategy ``loop``) stops at convergence. The steps are taken without a graph: memory does not depend on
the number of steps.

**The strength** ``lambda`` (``lam``, default 1). The trained initialisation is for *this* adaptation: with
the proximal solve a sharp initialisation adapts well (the solve is a damped Newton-like step), so nothing in
the meta-gradient keeps the curvature below ``2 / alpha``, where the plain SGD steps of ``evaluate``/``adapt``
are stable. Measured on the sinusoid (docs/results/estimators.md): ``lambda = 10`` and ``100`` learned
initialisations whose SGD adaptation diverges on some held-out tasks, ``lambda = 1`` one that stays finite.
So iMAML declares the proximal solve as its own adaptation (:meth:`Implicit.adapt`, ``s`` solver steps;
``MetaLearner.own_adaptation_metric``), and ``torchmaml evaluate`` scores an ``implicit`` run after it too,
in the rows ``maml (proximal)``.

**The linear system** (``curvature``, ``damping``, ``cg_iterations``). On ReLU networks ``H_i`` has large
negative eigenvalues and ``I + H_i/lambda`` is indefinite, where conjugate gradient has no meaning.
``curvature = "gauss_newton"`` (the default) replaces ``H_i`` by the Gauss-Newton matrix ``J^T H_l J``
(``torchmaml.estimators.hvp``), positive semi-definite for the MSE and the cross-entropy and equal to
``H_i`` on a linear model; ``"hessian"`` keeps the exact Hessian. ``damping`` adds ``damping * I`` to the
system. Either way CG (``torchmaml.linalg.truncated_conjugate_gradient``, ``cg_iterations`` steps from
``x = 0``, one curvature-vector product each) stops at a direction of non-positive curvature and keeps its
iterate (at the first step: ``x = grad f_i(phi; D_o)``, the first-order answer).

**Diagnostics**, averaged over the tasks and logged every iteration: ``inner_residual`` (the relative
stationarity residual reached), ``inner_steps`` (steps kept), ``cg_residual`` (``||b - A x|| / ||b||``),
``cg_negative_curvature`` (the fraction of tasks where CG met one). :meth:`Implicit.diagnose` turns them into
a warning (``MetaLearner`` warns after ``patience`` iterations in a row that it flags).

**Compilation.** The whole estimate traces into one graph: the Gauss-Newton products go through reverse-mode
maps recorded once per task (``hvp.gauss_newton_operator``). An eager call costs several of MAML's, so
``compile = "auto"`` compiles it sooner (``auto_compile_after``).

The inner rates get a zero gradient (the minimiser does not depend on the path to it), and MAML++'s
multi-step loss is refused. When the inner loop adapts only some parameters (ANIL), those parameters
get the CG solution ``x`` and the others ``w_b`` the implicit gradient through the minimiser,
``grad_b f_i(phi_i; D_o) - C_i[b, adapted] x / lambda`` (``C_i`` the curvature used).

Usage::

    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.1, inner_steps=10, estimator="implicit",
                          estimator_options={"lam": 2.0, "cg_iterations": 5})

or on the command line ``--set estimator=implicit --set 'estimator_options={lam=2.0, cg_iterations=5}'``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import grad, grad_and_value, vjp

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task
from torchmaml.estimators.hvp import (
    ScalarFunction,
    gauss_newton_operator,
    norm,
    partial_grad,
    rate_times,
)
from torchmaml.functional import Params
from torchmaml.inner import StepLR, sgd_step, step_lr
from torchmaml.linalg import dot, truncated_conjugate_gradient

SOLVERS = ("backtracking", "fixed")
CURVATURES = ("gauss_newton", "hessian")
ARMIJO = 1e-4  # sufficient decrease: P(phi - t g) <= P(phi) - ARMIJO t ||g||^2
IterateRecorder = Callable[[int, Params], object]  # record(step, phi): the solver's iterate after each step


@dataclass(frozen=True)
class Implicit(Estimator):
    """The iMAML gradient of one task (see the module docstring).

    Args:
        lam: the proximal regularisation strength ``lambda > 0``.
        solver: ``"backtracking"`` (gradient descent with Armijo steps to ``tolerance``) or ``"fixed"`` (the
            problem's ``steps`` plain steps at the inner rates).
        solver_steps: the backtracking solver's cap on trial steps (``>= 1``).
        tolerance: the backtracking solver stops once ``||grad P(phi)|| <= tolerance ||grad P(w)||`` (``> 0``).
        curvature: ``"gauss_newton"`` (positive semi-definite) or ``"hessian"`` (exact, possibly indefinite).
        cg_iterations: conjugate-gradient iterations (``>= 1``), one curvature-vector product each.
        damping: added to the diagonal of the system ``I + C / lambda`` (``>= 0``).
    """

    warning_residual: ClassVar[float] = 0.5  # diagnose: a residual above this many times the initial one
    own_adaptation: ClassVar[str | None] = "proximal"
    # the solve and CG make an eager call several times costlier than MAML's: compiling sooner pays
    auto_compile_after: ClassVar[int | None] = 1500

    lam: float = 1.0
    solver: str = "backtracking"
    solver_steps: int = 10
    tolerance: float = 0.05
    curvature: str = "gauss_newton"
    cg_iterations: int = 5
    damping: float = 0.0

    def __post_init__(self) -> None:
        if not _finite_number(self.lam) or not self.lam > 0:
            raise ConfigError(f"estimator_options: lam must be a finite number > 0, got {self.lam!r}")
        for name in ("cg_iterations", "solver_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"estimator_options: {name} must be an integer >= 1, got {value!r}")
        if not _finite_number(self.damping) or not self.damping >= 0:
            raise ConfigError(f"estimator_options: damping must be a finite number >= 0, got {self.damping!r}")
        if not _finite_number(self.tolerance) or not self.tolerance > 0:
            raise ConfigError(f"estimator_options: tolerance must be a finite number > 0, got {self.tolerance!r}")
        for name, choices in (("solver", SOLVERS), ("curvature", CURVATURES)):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"estimator_options: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        if problem.step_weights:
            raise ConfigError("estimator 'implicit' has no multi-step loss; leave step_weights unset")

        def support_loss(params: Params) -> torch.Tensor:
            return problem.loss(params, task["support_x"], task["support_y"])

        def query_loss(params: Params) -> torch.Tensor:
            return problem.loss(params, task["query_x"], task["query_y"])

        start = {name: p.detach() for name, p in meta["params"].items()}
        adapted = [name for name in start if problem.adapted is None or name in problem.adapted]
        lam = self.lam
        phi, metrics = self.solve(problem, meta, task)

        def padded(vector: Params) -> Params:
            return {name: vector[name] if name in vector else torch.zeros_like(p) for name, p in phi.items()}

        if self.curvature == "hessian":  # H u as the vjp of grad f, its graph recorded once
            _, hessian = vjp(grad(support_loss), phi)

            def curvature(vector: Params) -> Params:
                return hessian(vector)[0]

        else:
            curvature = gauss_newton_operator(
                lambda params: problem.model(params, task["support_x"], problem.context.at_step(None)),
                lambda prediction: problem.loss_fn(prediction, task["support_y"]),
                phi,
            )

        def curved(vector: Params) -> Params:
            return curvature(padded(vector))

        def system(vector: Params) -> Params:
            product = curved(vector)
            return {name: (1 + self.damping) * v + product[name] / lam for name, v in vector.items()}

        query_grad, loss_after = grad_and_value(query_loss)(phi)
        report = truncated_conjugate_gradient(system, {name: query_grad[name] for name in adapted}, self.cg_iterations)
        grads = {**query_grad, **report.solution}
        fixed = [name for name in phi if name not in report.solution]
        if fixed:  # parameters the inner loop holds fixed still move the minimiser
            coupling = curved(report.solution)
            grads.update({name: query_grad[name] - coupling[name] / lam for name in fixed})

        metrics.update(
            loss_after=loss_after,
            cg_residual=report.residual,
            cg_negative_curvature=report.negative_curvature.to(loss_after.dtype),
        )
        if problem.track_loss_before:
            with torch.no_grad():
                metrics["loss_before"] = query_loss(start)
        lr_grads = {name: torch.zeros_like(t) for name, t in meta["lrs"].items()}
        return {"params": grads, "lrs": lr_grads}, metrics

    def adapt(self, problem: InnerProblem, meta: MetaParams, task: Task, steps: int) -> Params:
        """iMAML's adaptation with ``steps`` solver steps: the backtracking solver's trials (each one gradient
        evaluation, stopping earlier at ``tolerance``) or the fixed solver's plain steps; ``w`` itself at 0."""
        return self.adaptations(problem, meta, task, [steps])[0]

    def adaptations(self, problem: InnerProblem, meta: MetaParams, task: Task, counts: Sequence[int]) -> list[Params]:
        """``adapt`` at every step count of ``counts`` from one solve: the iterate after ``s`` steps of a solve
        capped at ``max(counts)`` is the result of a solve capped at ``s`` (the same computations)."""
        start = {name: p.detach() for name, p in meta["params"].items()}
        longest = max(counts)
        if longest == 0:
            return [start for _ in counts]
        iterates: dict[int, Params] = {}
        solver = dataclasses.replace(self, solver_steps=longest)
        final, _ = solver.solve(
            dataclasses.replace(problem, steps=longest), meta, task, lambda step, phi: iterates.setdefault(step, phi)
        )
        return [start if count == 0 else iterates.get(count, final) for count in counts]

    def solve(
        self, problem: InnerProblem, meta: MetaParams, task: Task, record: IterateRecorder | None = None
    ) -> tuple[Params, Metrics]:
        """iMAML's adaptation of one task: the approximate proximal minimiser ``phi`` from ``w = meta["params"]``
        on the support set (detached), and the solver's metrics ``inner_residual``, ``inner_steps``. ``record(s,
        phi)`` receives the iterate after each step ``s`` (a backtracking step is a trial, kept or not); a solve
        that stops early at ``tolerance`` records no later steps."""

        def support_loss(params: Params) -> torch.Tensor:
            return problem.loss(params, task["support_x"], task["support_y"])

        start = {name: p.detach() for name, p in meta["params"].items()}
        adapted = [name for name in start if problem.adapted is None or name in problem.adapted]
        solve = self._backtracking if self.solver == "backtracking" else self._fixed
        return solve(problem, meta, support_loss, start, adapted, self.lam, record)

    def _fixed(
        self,
        problem: InnerProblem,
        meta: MetaParams,
        support_loss: ScalarFunction,
        start: Params,
        adapted: list[str],
        lam: float,
        record: IterateRecorder | None = None,
    ) -> tuple[Params, Metrics]:
        """``problem.steps`` steps ``phi_{s+1} = phi_s - alpha_s grad P(phi_s)`` at the inner rates."""
        rates = problem.rates(meta["lrs"])
        phi = start
        initial = None
        for step in range(problem.steps + 1):
            gradient = self._proximal_grad(support_loss, phi, start, adapted, lam)
            initial = norm(gradient) if initial is None else initial
            if step == problem.steps:
                break
            phi = {**phi, **sgd_step({name: phi[name] for name in adapted}, gradient, step_lr(rates, step))}
            if record is not None:
                record(step + 1, phi)
        residual = _relative(norm(gradient), initial)
        return phi, {"inner_residual": residual, "inner_steps": torch.full_like(residual, problem.steps)}

    def _backtracking(
        self,
        problem: InnerProblem,
        meta: MetaParams,
        support_loss: ScalarFunction,
        start: Params,
        adapted: list[str],
        lam: float,
        record: IterateRecorder | None = None,
    ) -> tuple[Params, Metrics]:
        """Gradient descent on ``P`` with Armijo backtracking (module docstring), to ``tolerance`` or
        ``solver_steps`` trials."""
        rate = step_lr(problem.rates(meta["lrs"]), 0)

        def proximal(fast: Params) -> torch.Tensor:
            distance = sum(torch.sum((fast[name] - start[name]) ** 2) for name in adapted)
            return support_loss({**start, **fast}) + lam / 2 * distance

        fast = {name: start[name] for name in adapted}
        gradient, objective = grad_and_value(proximal)(fast)
        initial = norm(gradient)
        scale = torch.ones_like(objective)  # the trial step is scale * rate
        largest = 1 / (lam * _largest(rate))
        kept = torch.zeros_like(objective)
        converged = initial == 0
        for trial_count in range(1, self.solver_steps + 1):
            if not problem.context.vectorised and bool(converged):
                break
            step = rate_times(rate, gradient)
            trial = {name: p - scale * step[name] for name, p in fast.items()}
            trial_gradient, trial_objective = grad_and_value(proximal)(trial)
            accept = ~converged & (trial_objective <= objective - ARMIJO * scale * dot(gradient, step))
            fast = {name: torch.where(accept, trial[name], p) for name, p in fast.items()}
            gradient = {name: torch.where(accept, trial_gradient[name], g) for name, g in gradient.items()}
            objective = torch.where(accept, trial_objective, objective)
            scale = torch.where(accept, (2 * scale).clamp_max(largest), scale / 2)
            kept = kept + accept.to(kept.dtype)
            converged = converged | (norm(gradient) <= self.tolerance * initial)
            if record is not None:
                record(trial_count, {**start, **fast})
        residual = _relative(norm(gradient), initial)
        return {**start, **fast}, {"inner_residual": residual, "inner_steps": kept}

    def _proximal_grad(
        self, support_loss: ScalarFunction, phi: Params, start: Params, adapted: list[str], lam: float
    ) -> Params:
        """``grad P(phi) = grad f(phi; D_in) + lambda (phi - w)`` on the adapted parameters."""
        support_grad = partial_grad(support_loss, phi, adapted)
        return {name: g + lam * (phi[name] - start[name]) for name, g in support_grad.items()}

    def diagnose(self, metrics: dict[str, float]) -> str | None:
        """A warning when this iteration's solves were poor: the inner residual above ``warning_residual``,
        CG's residual above it, or negative curvature met on half the tasks; else ``None``."""
        problems = []
        if metrics.get("inner_residual", 0.0) > self.warning_residual:
            problems.append(
                f"the inner problem is not solved (residual {metrics['inner_residual']:.2f} of the initial gradient; "
                "raise solver_steps or lam)"
            )
        if metrics.get("cg_negative_curvature", 0.0) >= 0.5:
            problems.append(
                "I + H/lam is not positive definite (CG met negative curvature; use curvature gauss_newton, "
                "damping or a larger lam)"
            )
        elif metrics.get("cg_residual", 0.0) > self.warning_residual:
            problems.append(f"CG did not converge (residual {metrics['cg_residual']:.2f}; raise cg_iterations)")
        return "implicit: " + "; ".join(problems) if problems else None


def _relative(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value / reference``, ``0`` where ``reference`` is ``0``."""
    return torch.where(reference > 0, value / reference.clamp_min(torch.finfo(reference.dtype).tiny), 0.0)


def _largest(rate: StepLR) -> float | torch.Tensor:
    """The largest entry of a step rate (a number, a tensor, or one per parameter)."""
    if isinstance(rate, Mapping):
        return torch.stack([torch.as_tensor(r).max() for r in rate.values()]).max()
    return torch.as_tensor(rate).max() if isinstance(rate, torch.Tensor) else rate


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
