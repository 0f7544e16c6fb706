"""``torchmaml.linalg`` and ``torchmaml.pytree``: one conjugate-gradient solver over pytrees (iMAML's parameter
dictionaries, TRPO's flat vectors) and one flatten/unflatten."""

from __future__ import annotations

import torch

from torchmaml.linalg import conjugate_gradient, dot, truncated_conjugate_gradient
from torchmaml.pytree import flatten, unflatten


def spd(n: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_flatten_and_unflatten_are_inverse_and_keep_the_dictionary_order():
    params = {"b": torch.arange(6.0).view(2, 3), "a": torch.tensor([7.0, 8.0])}
    vector = flatten(params)
    assert torch.equal(vector, torch.tensor([0.0, 1, 2, 3, 4, 5, 7, 8]))
    back = unflatten(vector * 2, params)
    assert list(back) == ["b", "a"] and back["b"].shape == (2, 3) and torch.equal(back["a"], params["a"] * 2)


def test_conjugate_gradient_on_a_dictionary_equals_it_on_the_flat_vector():
    matrix = spd(7)
    rhs = {"w": torch.randn(2, 2, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}

    def matvec(v):
        return unflatten(matrix @ flatten(v), rhs)

    tree = conjugate_gradient(matvec, rhs, iterations=5)
    flat = conjugate_gradient(lambda v: matrix @ v, flatten(rhs), iterations=5)
    torch.testing.assert_close(flatten(tree), flat, rtol=1e-12, atol=1e-12)
    exact = conjugate_gradient(lambda v: matrix @ v, flatten(rhs), iterations=7)  # n steps: the solution
    torch.testing.assert_close(matrix @ exact, flatten(rhs))


def test_a_tolerance_stops_early_and_a_zero_right_hand_side_gives_zero():
    matrix, b = spd(5), torch.ones(5, dtype=torch.float64)
    calls = []

    def matvec(v):
        calls.append(1)
        return matrix @ v

    conjugate_gradient(matvec, b, iterations=50, tolerance=1e-20)
    assert len(calls) <= 6  # exact after n = 5 steps, up to round-off
    zero = conjugate_gradient(lambda v: matrix @ v, torch.zeros(5, dtype=torch.float64), iterations=3)
    assert torch.equal(zero, torch.zeros(5, dtype=torch.float64))
    assert dot({"a": torch.ones(2), "b": torch.ones(3)}, {"a": torch.ones(2), "b": 2 * torch.ones(3)}) == 8


def test_truncated_conjugate_gradient_solves_a_positive_definite_system_and_reports_it():
    matrix, rhs = spd(6), torch.arange(1.0, 7.0, dtype=torch.float64)
    report = truncated_conjugate_gradient(lambda v: matrix @ v, rhs, iterations=6)
    torch.testing.assert_close(report.solution, torch.linalg.solve(matrix, rhs))
    assert report.residual < 1e-10 and report.iterations == 6 and not report.negative_curvature


def test_truncated_conjugate_gradient_stops_at_negative_curvature():
    """On an indefinite matrix CG stops at the first direction with ``d^T A d <= 0`` and keeps its iterate; when
    that is the first direction it returns ``rhs``."""
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    rhs = torch.tensor([1.0, 0.5], dtype=torch.float64)  # d_0 = rhs: curvature 0.75; d_1 = (10/9, 20/9): -100/27
    report = truncated_conjugate_gradient(lambda v: indefinite @ v, rhs, iterations=3)
    assert report.negative_curvature and report.iterations == 1
    first_step = (rhs @ rhs) / (rhs @ indefinite @ rhs) * rhs  # the one CG step before the stop
    torch.testing.assert_close(report.solution, first_step)
    torch.testing.assert_close(report.residual, (rhs - indefinite @ first_step).norm() / rhs.norm())
    at_once = truncated_conjugate_gradient(lambda v: -v, rhs, iterations=3)  # negative definite
    assert at_once.negative_curvature and at_once.iterations == 0 and torch.equal(at_once.solution, rhs)
    under_vmap = torch.vmap(lambda b: truncated_conjugate_gradient(lambda v: indefinite @ v, b, 3).solution)
    torch.testing.assert_close(under_vmap(torch.stack([rhs, rhs])), torch.stack([first_step, first_step]))
