"""``torchmaml.linalg`` and ``torchmaml.pytree``: one conjugate-gradient solver over pytrees (iMAML's parameter
dictionaries, TRPO's flat vectors) and one flatten/unflatten."""

from __future__ import annotations

import torch

from torchmaml.linalg import conjugate_gradient, dot
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
