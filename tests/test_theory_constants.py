"""The theory lab's estimators recover the constants of task families where they are known in closed form:
quadratic tasks (a pool of fixed quadratics), linear regression with Gaussian features, and a cubic with a known
Hessian Lipschitz constant; the high-accuracy references agree with the closed forms."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchmaml import MetaLearner, TaskBatch
from torchmaml.errors import ConfigError
from torchmaml.theory import estimate_constants, estimate_hessian_lipschitz
from torchmaml.theory.assumptions import check_inner_rate
from torchmaml.theory.bounds import batch_second_moment_bound, first_moment_bound, iteration_bound, second_moment_bound
from torchmaml.theory.linear_tasks import LinearRegressionTasks, lab_linear_family
from torchmaml.theory.reference import reference_meta_gradient, reference_meta_objective, reference_task_gradients
from torchmaml.theory.sinusoid_family import SinusoidFamily
from torchmaml.theory.statistics import Estimate, jackknife, mean_estimate, power_law_fit

# The theory lab is research code at the repository root (experiments/theory_lab), not part of the package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.theory_lab.constants import set_weights  # noqa: E402
from experiments.theory_lab.setups import lab_setup  # noqa: E402

ALPHA = 0.07


def quadratic_pool() -> LinearRegressionTasks:
    """Three fixed quadratics (no task spread, no label noise), with different rotated covariances."""
    generator = torch.Generator().manual_seed(3)
    covariances, means = [], []
    for scale in (1.0, 0.5, 0.2):
        rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator, dtype=torch.float64))
        spectrum = scale * torch.tensor([1.0, 0.6, 0.3, 0.1], dtype=torch.float64)
        covariances.append(rotation @ torch.diag(spectrum) @ rotation.T)
        means.append(torch.randn(4, generator=generator, dtype=torch.float64))
    return LinearRegressionTasks(torch.stack(covariances), torch.stack(means), task_std=0.0, noise_std=0.0)


def gaussian_regression() -> LinearRegressionTasks:
    """One task type, Gaussian task weights and label noise."""
    covariance = torch.diag(torch.tensor([1.0, 0.5, 0.25, 0.1], dtype=torch.float64))
    return LinearRegressionTasks(covariance[None], torch.ones(1, 4, dtype=torch.float64), task_std=1.0, noise_std=0.5)


@pytest.mark.parametrize("family", [quadratic_pool(), gaussian_regression()], ids=["quadratic", "regression"])
def test_estimated_constants_match_the_closed_forms(family):
    population = dataclasses.replace(family, support_size=1500, query_size=20)
    learner = MetaLearner(family.model(), F.mse_loss, inner_lr=ALPHA)
    point = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)
    set_weights(learner, point)
    estimated = estimate_constants(learner, population, num_tasks=120, power_iterations=60, probes=4, chunk_size=120)
    exact = family.constants(point)
    for name in ("task_gradient_variance", "sample_gradient_variance", "sample_hessian_variance"):
        value = getattr(estimated, name)
        assert abs(value.value - exact[name]) <= 4 * value.error, (name, value, exact[name])
    # L is the largest of noisy per-task estimates: allow the overshoot of a maximum (a few per-task errors)
    assert abs(estimated.smoothness.value - exact["smoothness"]) <= 4 * estimated.smoothness.error
    assert estimated.hessian_lipschitz.value < 1e-8


def test_hessian_lipschitz_recovers_a_known_cubic():
    """``l(w) = (w - y)^3 / 6`` has Hessian ``w - y``: rho = 1 along every (1-D) direction, random or gradient."""
    model = nn.Linear(1, 1, bias=False).double()
    x = torch.ones(3, 5, 1, dtype=torch.float64)
    batch = TaskBatch(x, torch.randn(3, 5, 1, dtype=torch.float64), x, x)
    learner = MetaLearner(model, lambda prediction, y: ((prediction - y) ** 3).mean() / 6)
    for along in (False, True):
        rho = estimate_hessian_lipschitz(learner, batch, along_gradient=along)
        assert torch.allclose(rho, torch.ones(3, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("steps", [1, 3])
def test_references_agree_with_the_linear_closed_forms(steps):
    family = lab_linear_family()
    learner = MetaLearner(family.model(), F.mse_loss, inner_lr=ALPHA, inner_steps=steps)
    point = torch.linspace(-0.5, 1.5, 10, dtype=torch.float64)
    set_weights(learner, point)
    tasks = family.sample_tasks(6, torch.Generator().manual_seed(0))
    assert torch.allclose(reference_meta_gradient(learner, family), family.meta_gradient(point, ALPHA, steps))
    assert torch.allclose(
        reference_task_gradients(learner, family, tasks), family.task_meta_gradients(point, tasks, ALPHA, steps)
    )
    noise = family.noise_std**2  # the population sets are noise-free
    assert reference_meta_objective(learner, family) + noise == pytest.approx(
        family.meta_objective(point, ALPHA, steps)
    )


def test_closed_form_minimiser_and_first_order_floor():
    family = lab_linear_family()
    assert family.meta_gradient(family.minimiser(ALPHA), ALPHA).norm() < 1e-12
    fixed = family.first_order_fixed_point(ALPHA)
    expected_first_order = family.hessians() @ (torch.eye(10, dtype=torch.float64) - ALPHA * family.hessians())
    assert torch.einsum("kde,ke->d", expected_first_order, fixed - family.means).norm() < 1e-12
    assert family.first_order_floor(ALPHA) > 1e-3


def test_sinusoid_reference_is_converged_in_the_quadrature():
    coarse, fine = SinusoidFamily(nodes=6, grid=100), SinusoidFamily(nodes=10, grid=200)
    learner = MetaLearner(coarse.model(), F.mse_loss, inner_lr=0.01)
    a, b = reference_meta_gradient(learner, coarse), reference_meta_gradient(learner, fine)
    assert (a - b).norm() / b.norm() < 1e-3


def test_inner_rate_checks_decide_only_beyond_two_standard_errors():
    holds, strict = check_inner_rate(0.07, Estimate(2.0, 0.01))
    assert holds.holds is True and strict.holds is True
    assert check_inner_rate(0.1, Estimate(2.0, 0.01))[1].holds is False
    assert check_inner_rate(0.083, Estimate(2.0, 0.05))[1].holds is None


def test_bound_formulas():
    assert first_moment_bound(1.0, 10.0, 5) == pytest.approx(2 + 0.08 * 2)
    assert second_moment_bound(1.0, 2.0, 12.0, 2, 4) == pytest.approx(40 + 28 + 12 * (0.5 + 1 / 12))
    batch = batch_second_moment_bound(1.0, 2.0, 12.0, 2, 4, 8)
    assert batch == pytest.approx(first_moment_bound(1.0, 12.0, 2) + second_moment_bound(1.0, 2.0, 12.0, 2, 4) / 8)
    assert iteration_bound(2.0, 3.0, 0.5, 0.1, 4.0, 0.5) == pytest.approx(1600 * 2 * (3 + 0.5 * 0.1 * 4.5) / 0.25)


def test_statistics_helpers():
    values = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = mean_estimate(values)
    knife = jackknife(lambda rows: values[rows].mean(), values.numel())
    assert knife.value == pytest.approx(plain.value) and knife.error == pytest.approx(plain.error)
    fit = power_law_fit([1, 2, 4, 8], [3.0, 1.5, 0.75, 0.375])
    assert fit.value == pytest.approx(-1.0) and fit.error == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(power_law_fit([1], [1.0]).value)


def test_bad_input_is_a_config_error():
    family = lab_linear_family()
    learner = MetaLearner(family.model(), F.mse_loss, inner_lr=ALPHA)
    with pytest.raises(ConfigError, match="num_tasks"):
        estimate_constants(learner, family, num_tasks=1)
    with pytest.raises(ConfigError, match="radius"):
        estimate_constants(learner, family, radius=-1.0)
    with pytest.raises(ConfigError, match="at least 2 examples"):
        estimate_constants(learner, dataclasses.replace(family, support_size=1), num_tasks=3)
    with pytest.raises(ConfigError, match="means"):
        LinearRegressionTasks(family.covariances, family.means[:, :3])
    with pytest.raises(ConfigError, match="positive definite"):
        LinearRegressionTasks(-family.covariances, family.means)
    with pytest.raises(ConfigError, match="unknown family"):
        lab_setup("omniglot")
