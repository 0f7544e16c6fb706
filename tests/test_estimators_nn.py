"""The estimators on neural networks against independent references, under the vmap and loop strategies.

The references work on one flat parameter vector per task with plain ``torch.autograd`` (``grad`` and
``torch.autograd.functional.hessian`` for an explicit Hessian of these tiny nets), in a Python loop over
tasks, as one would check the formulas by hand; they share nothing with the estimators' code.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import INNER_LOOP_VARIANTS, flat, small_convnet, small_mlp, unflatten
from torch import nn
from torch.func import functional_call

from torchmaml import MetaLearner, TaskBatch

STRATEGIES = ("vmap", "loop")


def regression_batch(tasks=3) -> TaskBatch:
    sizes = (6, 7, 5)  # support, query, hessian
    return TaskBatch(*(torch.randn(tasks, n, 1, dtype=torch.float64) for n in sizes for _ in range(2)))


def image_batch(tasks=2, ways=3) -> TaskBatch:
    def split(shots):
        images = torch.randn(tasks, ways * shots, 1, 8, 8, dtype=torch.float64)
        return images, torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()

    return TaskBatch(*split(2), *split(2), *split(1))


WORKLOADS = {
    "mlp": (small_mlp, F.mse_loss, regression_batch, 0.1),
    "convnet": (small_convnet, F.cross_entropy, image_batch, 0.3),
}


# -- the references ---------------------------------------------------------------------------------------


class FlatTask:
    """Task ``i``'s losses as functions of one flat parameter vector, with their gradients and Hessians."""

    def __init__(self, model: nn.Module, loss_fn, batch: TaskBatch, i: int) -> None:
        self.model, self.loss_fn, self.batch, self.i = model, loss_fn, batch, i
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [p.detach() for p in model.parameters()]

    def data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "union":
            support, query = self.data("support"), self.data("query")
            return torch.cat([support[0], query[0]]), torch.cat([support[1], query[1]])
        return getattr(self.batch, f"{split}_x")[self.i], getattr(self.batch, f"{split}_y")[self.i]

    def loss(self, split: str, vector: torch.Tensor) -> torch.Tensor:
        x, y = self.data(split)
        params = dict(zip(self.names, unflatten(vector, self.shapes), strict=True))
        return self.loss_fn(functional_call(self.model, params, (x,)), y)

    def grad(self, split: str, vector: torch.Tensor) -> torch.Tensor:
        vector = vector.detach().requires_grad_(True)
        return torch.autograd.grad(self.loss(split, vector), vector)[0]

    def hessian(self, split: str, vector: torch.Tensor) -> torch.Tensor:
        return torch.autograd.functional.hessian(lambda v: self.loss(split, v), vector.detach())

    def gauss_newton(self, split: str, vector: torch.Tensor) -> torch.Tensor:
        """``J^T H_l J``: ``J`` the Jacobian of the outputs (flattened) in the parameters, ``H_l`` the loss's
        Hessian in the outputs, both explicit."""
        x, y = self.data(split)

        def outputs(v: torch.Tensor) -> torch.Tensor:
            params = dict(zip(self.names, unflatten(v, self.shapes), strict=True))
            return functional_call(self.model, params, (x,))

        prediction = outputs(vector.detach())
        jacobian = torch.autograd.functional.jacobian(outputs, vector.detach()).reshape(prediction.numel(), -1)
        loss_hessian = torch.autograd.functional.hessian(
            lambda out: self.loss_fn(out.reshape(prediction.shape), y), prediction.reshape(-1)
        )
        return jacobian.T @ loss_hessian @ jacobian

    def sgd(self, vector: torch.Tensor, split: str, rate: float, steps: int) -> list[torch.Tensor]:
        points = [vector]
        for _ in range(steps):
            points.append(points[-1] - rate * self.grad(split, points[-1]))
        return points


def reference_three_batch(task: FlatTask, w, rate, steps) -> torch.Tensor:
    """``prod_s (I - alpha H(w_s; D_h)) grad f(w_K; D_o)`` with explicit Hessians."""
    points = task.sgd(w, "support", rate, steps)
    adjoint = task.grad("query", points[-1])
    for point in reversed(points[:-1]):
        adjoint = adjoint - rate * task.hessian("hessian", point) @ adjoint
    return adjoint


def reference_hessian_free(task: FlatTask, w, rate, steps, delta=None, rho=None) -> torch.Tensor:
    """The paper's difference ``[grad f(w + delta v; D_h) - grad f(w - delta v; D_h)] / (2 delta)`` at every step."""
    points = task.sgd(w, "support", rate, steps)
    adjoint = task.grad("query", points[-1])
    for point in reversed(points[:-1]):
        step = delta if rho is None else 1 / (6 * rho * rate * adjoint.norm())
        difference = task.grad("hessian", point + step * adjoint) - task.grad("hessian", point - step * adjoint)
        adjoint = adjoint - rate * difference / (2 * step)
    return adjoint


def matrix_conjugate_gradient(matrix: torch.Tensor, rhs: torch.Tensor, iterations: int) -> torch.Tensor:
    """Truncated CG: stop at a direction of non-positive curvature (at the first step: return ``rhs``)."""
    x, r = torch.zeros_like(rhs), rhs.clone()
    p = r.clone()
    for iteration in range(iterations):
        if p @ matrix @ p <= 0:
            return rhs if iteration == 0 else x
        step = (r @ r) / (p @ matrix @ p)
        x, r_next = x + step * p, r - step * matrix @ p
        p = r_next + (r_next @ r_next) / (r @ r) * p
        r = r_next
    return x


def reference_implicit(
    task: FlatTask, w, rate, steps, lam, cg_iterations, damping=0.0, adapted=None, curvature="hessian"
) -> torch.Tensor:
    """``x = ((1 + damping) I + H/lambda)^{-1} grad f(phi; D_o)`` on the adapted block, explicit Hessian (or
    explicit Gauss-Newton matrix), by CG (an exact solve when ``cg_iterations`` is None); the others get
    ``grad_b f(phi; D_o) - H[b, adapted] x / lambda``.
    """
    adapted = torch.ones_like(w, dtype=torch.bool) if adapted is None else adapted
    phi = w
    for _ in range(steps):
        phi = phi - rate * torch.where(adapted, task.grad("support", phi) + lam * (phi - w), 0.0)
    hessian = task.hessian("support", phi) if curvature == "hessian" else task.gauss_newton("support", phi)
    query_grad = task.grad("query", phi)
    block = hessian[adapted][:, adapted]
    system = (1 + damping) * torch.eye(len(block), dtype=w.dtype) + block / lam
    if cg_iterations is None:
        solution = torch.linalg.solve(system, query_grad[adapted])
    else:
        solution = matrix_conjugate_gradient(system, query_grad[adapted], cg_iterations)
    grads = query_grad - hessian[:, adapted] @ solution / lam
    grads[adapted] = solution
    return grads


def reference_reptile(task: FlatTask, w, rate, steps) -> torch.Tensor:
    return w - task.sgd(w, "union", rate, steps)[-1]


def batch_reference(model, loss_fn, batch, reference, *args, **kwargs) -> torch.Tensor:
    w = flat(p.detach() for p in model.parameters())
    per_task = [reference(FlatTask(model, loss_fn, batch, i), w, *args, **kwargs) for i in range(batch.num_tasks)]
    return torch.stack(per_task).mean(0)


# -- helpers ----------------------------------------------------------------------------------------------


def estimates(workload: str, estimator: str, steps: int, options=None, **learner_options):
    """The model, the batch, and the estimate under every strategy (flattened parameter gradients)."""
    make_model, loss_fn, make_batch, rate = WORKLOADS[workload]
    model, batch = make_model(), make_batch()
    results = {}
    for strategy in STRATEGIES:
        learner = MetaLearner(
            model, loss_fn, rate, steps, estimator, strategy, estimator_options=options, **learner_options
        )
        grads, _ = learner.meta_gradient(batch)
        results[strategy] = flat(grads["params"][name] for name, _ in model.named_parameters())
    return model, loss_fn, batch, rate, results


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def assert_matches(results: dict[str, torch.Tensor], reference: torch.Tensor, tolerance: float) -> None:
    for strategy, got in results.items():
        assert relative_error(got, reference) < tolerance, (strategy, relative_error(got, reference))
    assert relative_error(results["vmap"], results["loop"]) < 1e-12


# -- each estimator against its reference -----------------------------------------------------------------


@pytest.mark.parametrize("workload", ["mlp", "convnet"])
def test_three_batch_matches_explicit_hessians(workload):
    model, loss_fn, batch, rate, results = estimates(workload, "three_batch", steps=2)
    assert_matches(results, batch_reference(model, loss_fn, batch, reference_three_batch, rate, 2), 1e-10)


@pytest.mark.parametrize("options", [{"delta": 1e-2}, {"rho": 0.5}])
@pytest.mark.parametrize("workload", ["mlp", "convnet"])
def test_hessian_free_matches_the_papers_finite_difference(workload, options):
    model, loss_fn, batch, rate, results = estimates(workload, "hessian_free", steps=2, options=options)
    reference = batch_reference(model, loss_fn, batch, reference_hessian_free, rate, 2, **options)
    assert_matches(results, reference, 1e-10)


@pytest.mark.parametrize("workload", ["mlp", "convnet"])
def test_implicit_matches_conjugate_gradient_on_the_explicit_hessian(workload):
    options = {"lam": 2.0, "cg_iterations": 4, "damping": 0.1}
    fixed = {**options, "solver": "fixed", "curvature": "hessian"}
    model, loss_fn, batch, rate, results = estimates(workload, "implicit", steps=3, options=fixed)
    reference = batch_reference(model, loss_fn, batch, reference_implicit, rate, 3, **options)
    assert_matches(results, reference, 1e-10)


@pytest.mark.parametrize("workload", ["mlp", "convnet"])
def test_implicit_gauss_newton_matches_conjugate_gradient_on_the_explicit_gauss_newton_matrix(workload):
    """The operator ``J^T H_l J`` (one forward pass, then reverse-mode products only) against ``J`` and ``H_l``
    formed explicitly, on nets where it differs from the Hessian (MSE after tanh; cross-entropy after ReLU)."""
    options = {"lam": 2.0, "cg_iterations": 4, "damping": 0.1}
    fixed = {**options, "solver": "fixed", "curvature": "gauss_newton"}
    model, loss_fn, batch, rate, results = estimates(workload, "implicit", steps=3, options=fixed)
    reference = batch_reference(model, loss_fn, batch, reference_implicit, rate, 3, **options, curvature="gauss")
    assert_matches(results, reference, 1e-10)
    hessian = batch_reference(model, loss_fn, batch, reference_implicit, rate, 3, **options)
    assert relative_error(reference, hessian) > 1e-3  # the test can tell the two matrices apart


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_backtracking_solver_reaches_its_tolerance_on_a_smooth_nonlinear_net(strategy):
    """On a tanh net the solve ends where an independent autograd check finds the proximal gradient below
    ``tolerance`` times its value at ``w``, with a lower proximal objective, whatever the task."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    batch, lam, tolerance = regression_batch(), 1.0, 1e-3
    options = {"lam": lam, "tolerance": tolerance, "solver_steps": 150}
    learner = MetaLearner(model, F.mse_loss, 0.1, 1, "implicit", strategy, estimator_options=options)
    _, metrics = learner.meta_gradient(batch)
    assert metrics["inner_residual"] <= tolerance
    w = flat(p.detach() for p in model.parameters())
    meta = {"params": learner.functional.parameters(), "lrs": learner.rate_tensors()}
    for i in range(batch.num_tasks):
        task = FlatTask(model, F.mse_loss, batch, i)
        phi = learner.estimator.solve(learner.inner_problem(), meta, {k: t[i] for k, t in batch.tensors().items()})[0]
        phi = flat(phi[name] for name in task.names)

        def proximal(v: torch.Tensor, task=task) -> torch.Tensor:
            return task.loss("support", v) + lam / 2 * (v - w).square().sum()

        def proximal_grad(v: torch.Tensor, task=task) -> torch.Tensor:
            return task.grad("support", v) + lam * (v - w)

        assert proximal_grad(phi).norm() <= tolerance * proximal_grad(w).norm()
        assert proximal(phi) < proximal(w)


@pytest.mark.parametrize("workload", ["mlp", "convnet"])
def test_reptile_matches_sgd_on_support_and_query(workload):
    model, loss_fn, batch, rate, results = estimates(workload, "reptile", steps=3)
    assert_matches(results, batch_reference(model, loss_fn, batch, reference_reptile, rate, 3), 1e-12)


# -- relations between the estimators ---------------------------------------------------------------------


@pytest.mark.parametrize("learner_options,step_weights", INNER_LOOP_VARIANTS)
def test_three_batch_with_d_h_equal_to_d_in_is_unrolled_and_hessian_free_approximates_it(learner_options, step_weights):
    model, batch = small_mlp(), regression_batch()
    batch = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.support_x, batch.support_y)
    results = {}
    for estimator, options in [("unrolled", {}), ("three_batch", {}), ("hessian_free", {"delta": 1e-5})]:
        learner = MetaLearner(
            model, F.mse_loss, 0.1, 3, estimator, "vmap", estimator_options=options, **learner_options
        )
        learner.step_weights = step_weights
        grads, _ = learner.meta_gradient(batch)
        results[estimator] = {group: flat(grads[group].values()) for group in ("params", "lrs") if grads[group]}
    for group, exact in results["unrolled"].items():
        assert exact.norm() > 0
        assert relative_error(results["three_batch"][group], exact) < 1e-12, group
        assert relative_error(results["hessian_free"][group], exact) < 1e-7, group


def test_hessian_free_error_shrinks_as_delta_squared():
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()  # smooth: O(delta^2) holds
    batch = regression_batch()

    def estimate(estimator, **options):
        learner = MetaLearner(model, F.mse_loss, 0.1, 2, estimator, "vmap", estimator_options=options)
        return flat(learner.meta_gradient(batch)[0]["params"].values())

    exact = estimate("three_batch")
    errors = [relative_error(estimate("hessian_free", delta=delta), exact) for delta in (0.4, 0.2, 0.1, 0.05)]
    ratios = [earlier / later for earlier, later in itertools.pairwise(errors)]
    assert all(3.5 < ratio < 4.5 for ratio in ratios), (errors, ratios)


def test_implicit_and_reptile_with_anil():
    model, batch = small_mlp(), regression_batch()
    adapted = torch.cat(
        [torch.full((p.numel(),), name.startswith("4."), dtype=torch.bool) for name, p in model.named_parameters()]
    )
    options = {"lam": 2.0, "cg_iterations": 3}
    for strategy in STRATEGIES:
        fixed = {**options, "solver": "fixed", "curvature": "hessian"}
        learner = MetaLearner(
            model, F.mse_loss, 0.1, 3, "implicit", strategy, estimator_options=fixed, adapt_only=["4"]
        )
        got = flat(learner.meta_gradient(batch)[0]["params"].values())
        reference = batch_reference(model, F.mse_loss, batch, reference_implicit, 0.1, 3, adapted=adapted, **options)
        assert relative_error(got, reference) < 1e-10
        learner = MetaLearner(model, F.mse_loss, 0.1, 3, "reptile", strategy, adapt_only=["4"])
        direction = flat(learner.meta_gradient(batch)[0]["params"].values())
        assert torch.all(direction[~adapted] == 0) and direction[adapted].norm() > 0


@pytest.mark.parametrize("workload", ["mlp", "convnet"])
def test_implicit_approaches_the_exact_solve_as_cg_iterations_grow(workload):
    make_model, loss_fn, make_batch, rate = WORKLOADS[workload]
    model, batch = make_model(), make_batch(tasks=1)
    exact = batch_reference(model, loss_fn, batch, reference_implicit, rate, 2, lam=20.0, cg_iterations=None)
    errors = []
    for iterations in (1, 3, 10):
        options = {"lam": 20.0, "cg_iterations": iterations, "solver": "fixed", "curvature": "hessian"}
        learner = MetaLearner(model, loss_fn, rate, 2, "implicit", "vmap", estimator_options=options)
        errors.append(relative_error(flat(learner.meta_gradient(batch)[0]["params"].values()), exact))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors
