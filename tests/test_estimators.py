"""The estimators against closed forms on quadratic tasks, and their options.

A task's loss on a data set ``D = (X, y)`` is least squares on a linear model without bias,
``f(w; D) = 1/(2n) ||X w - y||^2 = 1/2 w^T A w - b^T w + const`` with ``A = X^T X / n``, ``b = X^T y / n``;
with ``y = X c`` this is ``1/2 (w - c)^T A (w - c)``: every gradient is ``A w - b`` and every Hessian
``A``, so MAML, iMAML and Reptile all have closed forms. Each of ``D_in``, ``D_o``, ``D_h`` has its own
``X`` and ``c``, so the three quadratics differ, and so do the tasks.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchmaml import ConfigError, MetaLearner, TaskBatch
from torchmaml.benchmark import benchmark_of
from torchmaml.config import load_config
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.estimators import ESTIMATORS, get_estimator
from torchmaml.theory.constants import estimate_hessian_lipschitz
from torchmaml.theory.step_size import STEP_SIZE_CONSTANTS

DIM = 4
RATE = 0.3


def half_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * F.mse_loss(prediction, target)


def linear_model(dim: int = DIM) -> nn.Module:
    return nn.Linear(dim, 1, bias=False).double()


def quadratic_batch(tasks: int = 3, dim: int = DIM, examples: int = 6, hessian_set: bool = True) -> TaskBatch:
    def data_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(tasks, n, dim, dtype=torch.float64)
        c = torch.randn(tasks, dim, 1, dtype=torch.float64)
        return x, x @ c

    sets = [data_set(examples), data_set(examples + 1)] + ([data_set(examples + 2)] if hessian_set else [])
    return TaskBatch(*(t for pair in sets for t in pair))


def curvature_and_target(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = X^T X / n`` and ``b = X^T y / n`` of one task's set: the gradient is ``A w - b``."""
    return x.T @ x / len(x), (x.T @ y / len(x)).squeeze(1)


def task_quadratics(batch: TaskBatch, i: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    sets = {name: (getattr(batch, f"{name}_x")[i], getattr(batch, f"{name}_y")[i]) for name in ("support", "query")}
    if batch.hessian_x is not None:
        sets["hessian"] = (batch.hessian_x[i], batch.hessian_y[i])
    return {name: curvature_and_target(x, y) for name, (x, y) in sets.items()}


def gradient_descent(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rate: float, steps: int) -> torch.Tensor:
    for _ in range(steps):
        w = w - rate * (a @ w - b)
    return w


def closed_form_maml(w: torch.Tensor, quadratics: dict, steps: int, hessian: str) -> torch.Tensor:
    """``(I - alpha A_h)^K (A_o w_K - b_o)`` with ``w_K`` from ``K`` steps on ``D_in``."""
    (a_in, b_in), (a_o, b_o), (a_h, _) = quadratics["support"], quadratics["query"], quadratics[hessian]
    adjoint = a_o @ gradient_descent(w, a_in, b_in, RATE, steps) - b_o
    for _ in range(steps):
        adjoint = adjoint - RATE * a_h @ adjoint
    return adjoint


def estimate(model: nn.Module, batch: TaskBatch, estimator: str, steps: int, rate=RATE, **options) -> torch.Tensor:
    learner = MetaLearner(
        model, half_mse, inner_lr=rate, inner_steps=steps, estimator=estimator, estimator_options=options
    )
    grads, _ = learner.meta_gradient(batch)
    return grads["params"]["weight"].reshape(-1)


def batch_mean(batch: TaskBatch, per_task) -> torch.Tensor:
    return torch.stack([per_task(task_quadratics(batch, i)) for i in range(batch.num_tasks)]).mean(0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-12) -> None:
    error = ((actual - expected).norm() / expected.norm()).item()
    assert error < tolerance, f"relative error {error:.3g}"


# -- MAML: unrolled, three_batch, hessian_free ------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3])
def test_unrolled_and_three_batch_with_d_h_equal_to_d_in_give_the_maml_closed_form(steps):
    model, batch = linear_model(), quadratic_batch(hessian_set=False)
    w = model.weight.detach().reshape(-1)
    expected = batch_mean(batch, lambda q: closed_form_maml(w, q, steps, hessian="support"))
    assert_close(estimate(model, batch, "unrolled", steps), expected)
    same = TaskBatch(*batch.tensors().values(), batch.support_x, batch.support_y)
    assert_close(estimate(model, same, "three_batch", steps), expected)


def test_three_batch_refuses_a_batch_without_a_hessian_set_in_one_line():
    with pytest.raises(ConfigError, match="independent set D_h but the batch has none") as error:
        estimate(linear_model(), quadratic_batch(hessian_set=False), "three_batch", 1)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("steps", [1, 3])
def test_three_batch_takes_the_hessian_on_its_own_batch(steps):
    model, batch = linear_model(), quadratic_batch()
    w = model.weight.detach().reshape(-1)
    expected = batch_mean(batch, lambda q: closed_form_maml(w, q, steps, hessian="hessian"))
    assert_close(estimate(model, batch, "three_batch", steps), expected)
    support_hessian = batch_mean(batch, lambda q: closed_form_maml(w, q, steps, hessian="support"))
    assert (expected - support_hessian).norm() > 1e-3 * expected.norm(), "D_h should matter"


@pytest.mark.parametrize("options", [{"delta": 1e-4}, {"delta": 0.5}, {"rho": 1.0}, {}])
@pytest.mark.parametrize("steps", [1, 3])
def test_hessian_free_is_exact_on_quadratics_for_any_step(options, steps):
    model, batch = linear_model(), quadratic_batch()
    w = model.weight.detach().reshape(-1)
    expected = batch_mean(batch, lambda q: closed_form_maml(w, q, steps, hessian="hessian"))
    assert_close(estimate(model, batch, "hessian_free", steps, **options), expected, tolerance=1e-9)


# -- iMAML ------------------------------------------------------------------------------------------------


def closed_form_imaml(w, quadratics, steps, lam, rate=RATE, damping=0.0, exact_minimiser=False) -> torch.Tensor:
    """``((1 + damping) I + A_in / lambda)^{-1} (A_o phi - b_o)``, ``phi`` the inner iterate or the minimiser."""
    (a_in, b_in), (a_o, b_o) = quadratics["support"], quadratics["query"]
    identity = torch.eye(len(w), dtype=w.dtype)
    if exact_minimiser:  # (A_in + lambda I) phi = b_in + lambda w
        phi = torch.linalg.solve(a_in + lam * identity, b_in + lam * w)
    else:  # gradient steps on f_in + lambda/2 ||phi - w||^2: gradient (A_in + lambda I) phi - (b_in + lambda w)
        phi = gradient_descent(w, a_in + lam * identity, b_in + lam * w, rate, steps)
    return torch.linalg.solve((1 + damping) * identity + a_in / lam, a_o @ phi - b_o)


@pytest.mark.parametrize("steps,lam,damping", [(1, 1.0, 0.0), (4, 0.5, 0.0), (3, 2.0, 0.1)])
def test_implicit_matches_the_closed_form_of_the_same_inner_steps(steps, lam, damping):
    model, batch = linear_model(), quadratic_batch()
    w = model.weight.detach().reshape(-1)
    expected = batch_mean(batch, lambda q: closed_form_imaml(w, q, steps, lam, damping=damping))
    options = {"lam": lam, "cg_iterations": DIM, "damping": damping, "solver": "fixed", "curvature": "hessian"}
    got = estimate(model, batch, "implicit", steps, **options)
    assert_close(got, expected, tolerance=1e-10)  # CG is exact in DIM iterations


def test_implicit_with_many_inner_steps_gives_the_implicit_gradient_at_the_minimiser():
    model, batch = linear_model(), quadratic_batch()
    w = model.weight.detach().reshape(-1)
    expected = batch_mean(batch, lambda q: closed_form_imaml(w, q, 0, lam=1.0, exact_minimiser=True))
    options = {"lam": 1.0, "cg_iterations": DIM, "solver": "fixed", "curvature": "hessian"}
    got = estimate(model, batch, "implicit", 300, rate=0.2, **options)
    assert_close(got, expected, tolerance=1e-10)


@pytest.mark.parametrize("curvature", ["gauss_newton", "hessian"])
@pytest.mark.parametrize("rate,damping", [(0.2, 0.0), (50.0, 0.0), (1e-3, 0.3)])
def test_the_backtracking_solver_reaches_the_minimiser_whatever_the_rate(rate, damping, curvature):
    """From a tiny rate (the step grows) or a huge one (``rate = 50`` would diverge as plain steps: Armijo halves
    it), the solver reaches the proximal minimiser, and the estimate is the implicit gradient there with the
    damped system; Gauss-Newton equals the Hessian on a linear model."""
    model, batch = linear_model(), quadratic_batch()
    w = model.weight.detach().reshape(-1)
    expected = batch_mean(batch, lambda q: closed_form_imaml(w, q, 0, 1.0, damping=damping, exact_minimiser=True))
    options = {"lam": 1.0, "cg_iterations": DIM, "tolerance": 1e-12, "solver_steps": 400, "damping": damping}
    learner = MetaLearner(model, half_mse, rate, 1, "implicit", estimator_options={**options, "curvature": curvature})
    grads, metrics = learner.meta_gradient(batch)
    assert_close(grads["params"]["weight"].reshape(-1), expected, tolerance=1e-8)  # Armijo's limit: sqrt(eps)
    assert metrics["inner_residual"] < 1e-7 and metrics["cg_residual"] < 1e-9
    assert metrics["cg_negative_curvature"] == 0


def test_damping_shrinks_the_implicit_gradient_as_its_closed_form_says():
    model, batch = linear_model(), quadratic_batch()
    w = model.weight.detach().reshape(-1)
    options = {"lam": 0.5, "cg_iterations": DIM, "tolerance": 1e-12, "solver_steps": 400}
    plain, damped = (estimate(model, batch, "implicit", 1, **options, damping=d) for d in (0.0, 1.0))
    expected = batch_mean(batch, lambda q: closed_form_imaml(w, q, 0, 0.5, damping=1.0, exact_minimiser=True))
    assert_close(damped, expected, tolerance=1e-8)
    assert damped.norm() < plain.norm()


def test_the_backtracking_solver_never_raises_the_proximal_objective():
    """One trial step at a rate that overshoots is refused: phi stays at w, where plain steps would diverge."""
    model, batch = linear_model(), quadratic_batch()
    options = {"lam": 1.0, "solver_steps": 1}
    learner = MetaLearner(model, half_mse, 100.0, 1, "implicit", estimator_options=options)
    _, metrics = learner.meta_gradient(batch)
    assert metrics["inner_steps"] == 0 and metrics["inner_residual"] == 1.0
    fixed = MetaLearner(model, half_mse, 100.0, 1, "implicit", estimator_options={"solver": "fixed"})
    assert fixed.meta_gradient(batch)[1]["inner_residual"] > 10


def test_poor_solves_warn_once_they_persist():
    model, batch = linear_model(), quadratic_batch()
    learner = MetaLearner(model, half_mse, 100.0, 1, "implicit", estimator_options={"solver_steps": 1})
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.0)
    with pytest.warns(RuntimeWarning, match="the inner problem is not solved.*10 meta-steps in a row"):
        for _ in range(10):
            learner.meta_step(batch, optimizer)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_implicit_adapts_held_out_tasks_with_its_own_proximal_solve(strategy, monkeypatch):
    """``own_adaptation_metric``: the query loss after 0, 2 and 300 plain steps on ``f + lambda/2 ||phi - w||^2``
    (the fixed solver) equals the closed form (300 steps: the minimiser itself); the backtracking solver's
    ``s`` trials end where the estimator's own solve with ``solver_steps = s`` does, every count read off one
    solve."""
    model, batch = linear_model(), quadratic_batch(hessian_set=False)
    w = model.weight.detach().reshape(-1)
    identity, lam, rate = torch.eye(DIM, dtype=torch.float64), 0.5, 0.2

    options = {"lam": lam, "solver": "fixed"}
    fixed = MetaLearner(model, half_mse, rate, 1, "implicit", strategy, estimator_options=options)
    got = fixed.own_adaptation_metric(batch, [0, 2, 300], half_mse)
    for i in range(batch.num_tasks):
        q = task_quadratics(batch, i)
        (a_in, b_in), x, y = q["support"], batch.query_x[i], batch.query_y[i]
        for j, steps in enumerate([0, 2]):
            phi = gradient_descent(w, a_in + lam * identity, b_in + lam * w, rate, steps)
            assert torch.allclose(got[i, j], half_mse(x @ phi.unsqueeze(1), y), rtol=1e-12)
        minimiser = torch.linalg.solve(a_in + lam * identity, b_in + lam * w)
        assert torch.allclose(got[i, 2], half_mse(x @ minimiser.unsqueeze(1), y), rtol=1e-10)

    backtracking = MetaLearner(model, half_mse, 0.05, 1, "implicit", strategy, estimator_options={"lam": lam})
    solves = []
    original = type(backtracking.estimator).solve
    with monkeypatch.context() as patch:  # every step count from one solve per task
        patch.setattr(type(backtracking.estimator), "solve", lambda *a, **k: solves.append(1) or original(*a, **k))
        got = backtracking.own_adaptation_metric(batch, [3, 7], half_mse)
    assert len(solves) == (1 if strategy == "vmap" else batch.num_tasks)
    meta = {"params": {"weight": model.weight.detach()}, "lrs": {}}
    for j, trials in enumerate([3, 7]):
        solver = get_estimator("implicit", {"lam": lam, "solver_steps": trials})
        for i in range(batch.num_tasks):
            task = {name: t[i] for name, t in batch.tensors().items()}
            phi = solver.solve(backtracking.inner_problem(), meta, task)[0]["weight"]
            assert torch.allclose(got[i, j], half_mse(task["query_x"] @ phi.T, task["query_y"]), rtol=1e-12)
    assert not torch.allclose(got[:, 0], got[:, 1])  # the step counts are told apart


def test_only_an_estimator_with_its_own_adaptation_scores_one():
    with pytest.raises(ConfigError, match="adapts with plain gradient steps"):
        MetaLearner(linear_model(), half_mse).own_adaptation_metric(quadratic_batch(), [1], half_mse)


def test_adapting_an_implicit_learner_runs_the_proximal_solve_it_was_trained_for():
    """``MetaLearner.adapt`` (and so ``torchmaml adapt``) of an iMAML learner returns the proximal solve's weights:
    by default the training solve (the fixed solver's 300 steps: the closed-form minimiser), with ``steps`` that
    many solver steps; ``adaptation="gradient"`` gives plain gradient steps on ``f`` alone instead."""
    model, batch = linear_model(), quadratic_batch(hessian_set=False)
    w, identity, lam, rate = model.weight.detach().reshape(-1), torch.eye(DIM, dtype=torch.float64), 0.5, 0.2
    learner = MetaLearner(model, half_mse, rate, 300, "implicit", estimator_options={"lam": lam, "solver": "fixed"})
    (a_in, b_in), sx, sy = task_quadratics(batch, 0)["support"], batch.support_x[0], batch.support_y[0]
    minimiser = torch.linalg.solve(a_in + lam * identity, b_in + lam * w)
    assert torch.allclose(learner.adapt(sx, sy).weight.reshape(-1), minimiser, rtol=1e-10)
    two_steps = gradient_descent(w, a_in + lam * identity, b_in + lam * w, rate, 2)
    assert torch.allclose(learner.adapt(sx, sy, steps=2).weight.reshape(-1), two_steps, rtol=1e-12)
    plain = gradient_descent(w, a_in, b_in, rate, 2)
    assert torch.allclose(learner.adapt(sx, sy, steps=2, adaptation="gradient").weight.reshape(-1), plain, rtol=1e-12)
    assert not torch.allclose(two_steps, plain)
    with pytest.raises(ConfigError, match="add adaptation='gradient'"):
        learner.adapt(sx, sy, inner_lr=0.1)
    with pytest.raises(ConfigError, match="must be 'own', 'gradient' or None"):
        learner.adapt(sx, sy, adaptation="proximal")
    with pytest.raises(ConfigError, match="adapts with plain gradient steps"):
        MetaLearner(linear_model(), half_mse).adapt(sx, sy, adaptation="own")


def test_implicit_converges_to_the_exact_solve_as_cg_iterations_grow():
    dim = 12
    model, batch = linear_model(dim), quadratic_batch(tasks=1, dim=dim, examples=14)
    w = model.weight.detach().reshape(-1)
    expected = batch_mean(batch, lambda q: closed_form_imaml(w, q, 2, lam=0.5, rate=0.1))
    errors = []
    for iterations in range(1, dim + 1):
        options = {"lam": 0.5, "cg_iterations": iterations, "solver": "fixed", "curvature": "hessian"}
        got = estimate(model, batch, "implicit", 2, rate=0.1, **options)
        errors.append(((got - expected).norm() / expected.norm()).item())
    assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[0] > 1e-3 and errors[-1] < 1e-9, errors


# -- Reptile ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_query", [True, False])
@pytest.mark.parametrize("steps", [1, 4])
def test_reptile_is_w_minus_the_sgd_iterate(use_query, steps):
    model, batch = linear_model(), quadratic_batch(hessian_set=False)
    w = model.weight.detach().reshape(-1)

    def direction(i: int) -> torch.Tensor:
        x, y = batch.support_x[i], batch.support_y[i]
        if use_query:
            x, y = torch.cat([x, batch.query_x[i]]), torch.cat([y, batch.query_y[i]])
        a, b = curvature_and_target(x, y)
        return w - gradient_descent(w, a, b, RATE, steps)

    expected = torch.stack([direction(i) for i in range(batch.num_tasks)]).mean(0)
    assert_close(estimate(model, batch, "reptile", steps, use_query=use_query), expected)


def test_an_outer_sgd_step_on_the_reptile_direction_is_the_reptile_update():
    model, batch = linear_model(), quadratic_batch(tasks=1, hessian_set=False)
    w = model.weight.detach().clone()
    learner = MetaLearner(model, half_mse, inner_lr=RATE, inner_steps=3, estimator="reptile")
    phi = learner.adaptation_trajectory(
        torch.cat([batch.support_x[0], batch.query_x[0]]), torch.cat([batch.support_y[0], batch.query_y[0]]), 3
    )[-1]["weight"]
    learner.meta_step(batch, torch.optim.SGD(learner.parameters(), lr=0.25))
    assert torch.allclose(model.weight.detach(), w + 0.25 * (phi - w), rtol=0, atol=1e-14)


# -- registration and options -----------------------------------------------------------------------------


def test_every_estimator_is_registered_and_reports_the_query_losses():
    assert {"unrolled", "first_order", "three_batch", "hessian_free", "implicit", "reptile"} <= set(ESTIMATORS)
    model, batch = linear_model(), quadratic_batch()
    for name in ("three_batch", "hessian_free", "implicit", "reptile"):
        learner = MetaLearner(model, half_mse, inner_lr=RATE, inner_steps=2, estimator=name)
        _, metrics = learner.meta_gradient(batch, loss_before=True)
        reference = learner.query_losses(batch, 2)
        assert torch.allclose(metrics["loss_before"], reference[:, 0].mean()), name
        if name in ("three_batch", "hessian_free"):  # implicit: proximal steps; reptile: on support and query
            assert torch.allclose(metrics["loss_after"], reference[:, 2].mean()), name


def test_estimator_options_are_defaults_or_validated():
    assert get_estimator("hessian_free").delta == 1e-3
    assert get_estimator("hessian_free", {"rho": 2.0}).delta is None
    assert get_estimator("implicit") == ESTIMATORS["implicit"](
        lam=1.0, solver="backtracking", solver_steps=10, tolerance=0.05, curvature="gauss_newton", cg_iterations=5
    )
    assert get_estimator("implicit", {"lam": 3, "cg_iterations": 8, "damping": 0.1}).cg_iterations == 8
    assert get_estimator("reptile", {"use_query": False}).use_query is False


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("hessian_free", {"delta": 0.0}, "delta must be a finite number > 0"),
        ("hessian_free", {"delta": -1e-3}, "delta must be a finite number > 0"),
        ("hessian_free", {"rho": 0}, "rho must be a finite number > 0"),
        ("hessian_free", {"delta": float("nan")}, "delta must be a finite number > 0"),
        ("hessian_free", {"delta": 1e-3, "rho": 1.0}, "delta or rho, not both"),
        ("hessian_free", {"epsilon": 1e-3}, "'epsilon' is not an option of 'hessian_free'"),
        ("implicit", {"lam": 0.0}, "lam must be a finite number > 0"),
        ("implicit", {"lam": "big"}, "lam must be a finite number > 0"),
        ("implicit", {"cg_iterations": 0}, "cg_iterations must be an integer >= 1"),
        ("implicit", {"cg_iterations": 2.5}, "cg_iterations must be an integer >= 1"),
        ("implicit", {"damping": -0.1}, "damping must be a finite number >= 0"),
        ("implicit", {"lambda": 1.0}, "'lambda' is not an option of 'implicit'"),
        ("implicit", {"solver": "newton"}, "solver must be one of backtracking, fixed"),
        ("implicit", {"curvature": "fisher"}, "curvature must be one of gauss_newton, hessian"),
        ("implicit", {"tolerance": 0}, "tolerance must be a finite number > 0"),
        ("implicit", {"solver_steps": 0}, "solver_steps must be an integer >= 1"),
        ("hessian_free", {"delta": "auto"}, 'delta must be a finite number > 0 or "theory"'),
        ("hessian_free", {"delta": "theory", "rho_every": 0}, "rho_every must be an integer >= 1"),
        ("reptile", {"use_query": 1}, "use_query must be true or false"),
        ("three_batch", {"delta": 1e-3}, "'delta' is not an option of 'three_batch' (its options: none)"),
    ],
)
def test_bad_options_give_a_one_line_config_error(name, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        MetaLearner(linear_model(), half_mse, estimator=name, estimator_options=options)
    assert "\n" not in str(error.value)


def test_estimators_are_selectable_from_the_command_line_config():
    config = load_config("sinusoid", ["estimator=hessian_free", "estimator_options={delta=1e-3}"])
    assert config.estimator == "hessian_free" and config.estimator_options == {"delta": 1e-3}
    config = load_config("sinusoid", ["estimator=implicit", "estimator_options={lam=2.0, cg_iterations=10}"])
    assert get_estimator(config.estimator, config.estimator_options).cg_iterations == 10
    with pytest.raises(ConfigError, match="cg_iterations must be an integer >= 1"):
        load_config("sinusoid", ["estimator=implicit", "estimator_options={cg_iterations=0}"])


@pytest.mark.parametrize("name", ["implicit", "reptile"])
def test_estimators_without_a_multi_step_loss_refuse_step_weights(name):
    learner = MetaLearner(linear_model(), half_mse, inner_lr=RATE, inner_steps=2, estimator=name)
    learner.step_weights = (0.5, 0.5)
    with pytest.raises(ConfigError, match="no multi-step loss"):
        learner.meta_gradient(quadratic_batch())


# -- edge cases -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "estimator,options", [("hessian_free", {"delta": 1e-3}), ("hessian_free", {"rho": 1.0}), ("implicit", {})]
)
def test_a_stationary_point_gives_zero_not_nan(estimator, options):
    model, batch = linear_model(), quadratic_batch(hessian_set=False)
    nn.init.zeros_(model.weight)  # zero targets: every gradient, difference direction and CG residual is 0
    batch = TaskBatch(batch.support_x, 0 * batch.support_y, batch.query_x, 0 * batch.query_y)
    assert torch.equal(estimate(model, batch, estimator, 2, **options), torch.zeros(DIM, dtype=torch.float64))


# -- the Hessian set D_h from data ------------------------------------------------------------------------


def test_task_sources_draw_an_independent_hessian_set_when_asked():
    generator = torch.Generator().manual_seed(0)
    batch = SinusoidTasks(5, 6, hessian_size=7, dtype=torch.float64).sample(3, generator)
    assert batch.hessian_x.shape == (3, 7, 1) and not torch.equal(batch.hessian_x[:, :5], batch.support_x)
    assert SinusoidTasks(5, 6).sample(3, generator).hessian_x is None
    images = torch.arange(4 * 6, dtype=torch.float32).view(4, 6, 1, 1, 1)  # 4 classes of 6 distinct images
    few = FewShotTasks(images, ways=2, shots=1, queries=2, hessian_shots=3).sample(5, generator)
    assert few.hessian_x.shape == (5, 6, 1, 1, 1) and torch.equal(few.hessian_y[0], torch.tensor([0, 0, 0, 1, 1, 1]))
    for i in range(5):  # same classes as the support set, disjoint examples
        support, query, hessian = (set(t[i].flatten().tolist()) for t in (few.support_x, few.query_x, few.hessian_x))
        assert not (hessian & support) and not (hessian & query)
        assert {int(v) // 6 for v in hessian} == {int(v) // 6 for v in support}
    with pytest.raises(ConfigError, match="shots \\+ queries \\+ hessian_size = 1 \\+ 2 \\+ 4"):
        FewShotTasks(images, ways=2, shots=1, queries=2, hessian_shots=4)


def test_three_batch_needs_hessian_size_in_a_config_and_trains_on_d_h():
    with pytest.raises(ConfigError, match="takes the Hessian on an independent set D_h: set hessian_size"):
        load_config("sinusoid", ["estimator=three_batch"])
    with pytest.raises(ConfigError, match="hessian_size: estimator 'unrolled' takes no Hessian set"):
        load_config("sinusoid", ["hessian_size=5"])
    config = load_config("sinusoid", ["estimator=three_batch", "hessian_size=5", "theory_c=0.1"])
    assert benchmark_of(config).tasks(config).sample(2, torch.Generator()).hessian_x.shape == (2, 5, 1)
    assert benchmark_of(config).tasks(config, "test").sample(2, torch.Generator()).hessian_x is None
    assert STEP_SIZE_CONSTANTS["three_batch"] == pytest.approx(1 / 12)


# -- HF-MAML with an estimated rho ------------------------------------------------------------------------


def test_hessian_free_theory_delta_uses_the_estimated_rho_on_its_schedule():
    """``delta = "theory"``: rho is ``estimate_hessian_lipschitz``'s maximum over the batch, re-estimated every
    ``rho_every`` meta-steps and logged; the difference step is the paper's ``1 / (6 rho alpha ||v||)``."""
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    batch = SinusoidTasks(5, 5, hessian_size=5, dtype=torch.float64).sample(3, torch.Generator().manual_seed(1))
    options = {"delta": "theory", "rho_every": 2}
    learner = MetaLearner(model, F.mse_loss, 0.1, 1, "hessian_free", estimator_options=options)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05)
    logged, estimated = [], []
    for _ in range(4):
        estimated.append(float(estimate_hessian_lipschitz(learner, batch).max()))
        logged.append(learner.meta_step(batch, optimizer)["hf_rho"])
    assert logged[0] == pytest.approx(estimated[0]) and logged[2] == pytest.approx(estimated[2])
    assert logged[1] == logged[0] and logged[3] == logged[2] and logged[2] != logged[0]
    rho = learner.estimator.current_rho()
    step = learner.estimator.difference_step(torch.tensor(2.0), torch.tensor(0.2))  # alpha = 0.1, ||v|| = 2
    assert float(step) == pytest.approx(
        (1 / 0.1) / (6 * rho * 0.2)
    )  # h ||u|| = delta ||v||, delta = 1/(6 rho alpha ||v||)
    same = get_estimator("hessian_free", {"rho": float(rho)})
    assert float(same.difference_step(torch.tensor(2.0), torch.tensor(0.2))) == pytest.approx(float(step))
    with pytest.raises(ConfigError, match="no estimate of rho yet"):
        MetaLearner(model, F.mse_loss, 0.1, 1, "hessian_free", estimator_options=options).meta_gradient(batch)


def test_hessian_free_theory_delta_resumes_with_its_estimate_on_the_same_schedule(tmp_path):
    """A run extended from its final checkpoint continues with the saved rho (re-estimating it there would
    change the numbers), so it ends bit-identical to the run trained in one go."""
    from torchmaml.checkpoint import load_checkpoint
    from torchmaml.config import load_config
    from torchmaml.train import train_run

    settings = ["estimator=hessian_free", 'estimator_options={delta="theory", rho_every=4}', "dtype=float64"]
    settings += ["pretrained_baseline=false", "meta_batch_size=3", "hidden=[8]", "checkpoint_every=3"]
    train_run(load_config("sinusoid", [*settings, "iterations=10"]), tmp_path / "whole", progress=False)
    train_run(load_config("sinusoid", [*settings, "iterations=6"]), tmp_path / "parts", progress=False)
    train_run(load_config("sinusoid", [*settings, "iterations=10"]), tmp_path / "parts", progress=False, resume=True)
    whole, parts = (load_checkpoint(tmp_path / run / "checkpoint-maml.pt") for run in ("whole", "parts"))
    assert float(parts["estimator"]["rho"]) == float(whole["estimator"]["rho"]) > 0
    assert all(torch.equal(whole["learner"][name], parts["learner"][name]) for name in whole["learner"])
