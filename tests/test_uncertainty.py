"""The scores of a particle ensemble's predictions (``torchmaml.bayesian.uncertainty``) against hand computations
written with ``math``/NumPy, under ``torch.func.vmap`` against a loop, and the figures of ``bayesian.figures``."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from torch.func import vmap

from torchmaml import extras
from torchmaml.bayesian.figures import plot_posterior_predictive, plot_reliability_diagram
from torchmaml.bayesian.uncertainty import (
    bootstrap_interval,
    calibration_bins,
    categorical_mixture_nll,
    expected_calibration_error,
    gaussian_mixture_cdf,
    gaussian_mixture_log_density,
    gaussian_mixture_nll,
    gaussian_mixture_quantile,
    interval_coverage,
    mixture_mean,
    mixture_probabilities,
    mixture_variance,
)

F64 = torch.float64
PNG = b"\x89PNG\r\n\x1a\n"


def normal_pdf(y: float, mu: float, sigma: float) -> float:
    return math.exp(-((y - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))


def normal_cdf(y: float, mu: float, sigma: float) -> float:
    return 0.5 * (1 + math.erf((y - mu) / (sigma * math.sqrt(2))))


# two particles, three points: particle m predicts N(MU[m][n], SIGMA[m]^2)
MU = [[0.0, 1.0, -2.0], [1.5, -0.5, 0.3]]
SIGMA = [0.7, 1.3]
Y = [0.4, 2.0, -1.0]


def test_gaussian_mixture_log_density_and_nll_equal_the_formula_by_hand():
    means = torch.tensor(MU, dtype=F64)
    stds = torch.tensor(SIGMA, dtype=F64).view(2, 1)
    y = torch.tensor(Y, dtype=F64)
    by_hand = [
        math.log(0.5 * (normal_pdf(Y[n], MU[0][n], SIGMA[0]) + normal_pdf(Y[n], MU[1][n], SIGMA[1]))) for n in range(3)
    ]
    assert torch.allclose(
        gaussian_mixture_log_density(means, stds, y), torch.tensor(by_hand, dtype=F64), atol=1e-13, rtol=0
    )
    nll = gaussian_mixture_nll(means, stds, y)
    assert nll.shape == () and nll.dtype == F64
    assert abs(nll.item() + sum(by_hand) / 3) < 1e-13
    # stds given in full ([M, N]) and an event axis ([M, N, 2]: the mean runs over points and event elements)
    full = stds.expand(2, 3).clone()
    assert torch.allclose(gaussian_mixture_nll(means, full, y), nll, atol=1e-14, rtol=0)
    doubled = gaussian_mixture_nll(torch.stack([means, means + 1], -1), stds.view(2, 1, 1), torch.stack([y, y + 1], -1))
    assert abs(doubled.item() - nll.item()) < 1e-13


def test_gaussian_mixture_log_density_is_stable_far_in_the_tail():
    """At y = 40 sigma the densities underflow in float64; the log-density is still the exact quadratic."""
    means = torch.tensor([[0.0], [0.0]], dtype=F64)
    stds = torch.tensor([[1.0], [1.0]], dtype=F64)
    log_p = gaussian_mixture_log_density(means, stds, torch.tensor([40.0], dtype=F64))
    assert abs(log_p.item() - (-800.0 - 0.5 * math.log(2 * math.pi))) < 1e-10


def test_categorical_mixture_matches_numpy_and_survives_underflow():
    logits = np.array(
        [[[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, -3.0], [3.0, -1.0, 0.0, 1.0]],
         [[0.0, 2.0, 1.0, -1.0], [-2.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    )  # fmt: skip
    y = np.array([3, 1, 2])
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p = softmax.mean(0)
    assert np.allclose(mixture_probabilities(torch.tensor(logits)).numpy(), p, atol=1e-15)
    expected = -np.mean(np.log(p[np.arange(3), y]))
    nll = categorical_mixture_nll(torch.tensor(logits), torch.tensor(y))
    assert nll.shape == () and abs(nll.item() - expected) < 1e-13
    # both particles put exp(-1000) on the label: averaging probabilities gives log 0; the mixture's is -1000
    extreme = torch.tensor([[[0.0, 1000.0]], [[0.0, 1000.0]]], dtype=F64)
    assert abs(categorical_mixture_nll(extreme, torch.tensor([0])).item() - 1000.0) < 1e-9


def test_mixture_quantile_inverts_the_cdf_by_hand():
    means = torch.tensor([[-1.0, 0.0, 5.0], [2.0, 0.1, 5.0], [0.5, -3.0, 5.0]], dtype=F64)
    sigma = [[0.5, 1.0, 0.01], [1.5, 2.0, 0.02], [0.2, 0.3, 3.0]]
    stds = torch.tensor(sigma, dtype=F64)
    for q in (0.001, 0.05, 0.3, 0.5, 0.77, 0.95, 0.999):
        x = gaussian_mixture_quantile(means, stds, q)
        assert x.shape == (3,)
        for n in range(3):
            cdf = sum(normal_cdf(x[n].item(), means[m, n].item(), sigma[m][n]) for m in range(3)) / 3
            assert abs(cdf - q) < 1e-8, (q, n, cdf)
        assert torch.allclose(gaussian_mixture_cdf(means, stds, x), torch.full((3,), q, dtype=F64), atol=1e-8)
    # a different q per point, and a coarse bisection that is still within 1e-6 of the bracket
    q = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    fine = gaussian_mixture_quantile(means, stds, q)
    bracket = (means + 10 * stds).amax(0) - (means - 10 * stds).amin(0)
    coarse = gaussian_mixture_quantile(means, stds, q, iterations=20)
    assert ((coarse - fine).abs() <= 1e-6 * bracket).all() and not torch.equal(coarse, fine)


def test_single_gaussian_quantile_is_mu_plus_sigma_sqrt2_erfinv():
    mu, sigma = 0.7, 2.5
    means = torch.full((1, 1), mu, dtype=F64)
    for q in (0.01, 0.2, 0.5, 0.9, 0.995):
        expected = mu + sigma * math.sqrt(2) * torch.special.erfinv(torch.tensor(2 * q - 1, dtype=F64)).item()
        assert abs(gaussian_mixture_quantile(means, sigma, q).item() - expected) < 1e-9


def test_interval_coverage_counts_the_points_inside_the_central_interval():
    """N(0, 1) twice (two identical particles): the central 90% interval is [-1.6449, 1.6449]."""
    y = torch.tensor([0.0, 1.0, 1.6, 1.7, -1.7, -1.6, 3.0, -0.5], dtype=F64)
    means = torch.zeros(2, 8, dtype=F64)
    stds = torch.ones(2, 1, dtype=F64)
    assert interval_coverage(means, stds, y).item() == 5 / 8
    assert interval_coverage(means, stds, y, level=0.5).item() == 2 / 8  # [-0.6745, 0.6745]: 0 and -0.5
    # two particles at -3 and 3 with sigma 0.1: the 90% interval is [-3.16, 3.16], so 0 is inside
    apart = torch.tensor([[-3.0], [3.0]], dtype=F64)
    inside = interval_coverage(apart, 0.1, torch.tensor([0.0, 3.1, 3.2], dtype=F64))
    assert abs(inside.item() - 2 / 3) < 1e-15


def test_mixture_mean_and_variance_follow_the_law_of_total_variance():
    means = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=F64)
    stds = torch.tensor([[1.0], [2.0]], dtype=F64)
    assert mixture_mean(means).tolist() == [2.0, 2.0]
    # (1 + 4) / 2 + population variance of the means: 1 for (1, 3), 4 for (0, 4)
    assert torch.allclose(mixture_variance(means, stds), torch.tensor([3.5, 6.5], dtype=F64), atol=1e-15)
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=(5, 7, 2)), rng.uniform(0.1, 2.0, size=(5, 7, 2))
    expected = (sigma**2).mean(0) + mu.var(0)  # NumPy's var: ddof = 0
    assert np.allclose(mixture_variance(torch.tensor(mu), torch.tensor(sigma)).numpy(), expected, atol=1e-14)


# four predictions over four classes into two bins [0, 0.5) and [0.5, 1]
PROBABILITIES = [[0.4, 0.3, 0.2, 0.1], [0.2, 0.45, 0.2, 0.15], [0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.9, 0.0]]
LABELS = [0, 2, 0, 1]  # right, wrong, right, wrong


def test_calibration_bins_and_ece_on_four_predictions_by_hand():
    stats = calibration_bins(torch.tensor(PROBABILITIES, dtype=F64), torch.tensor(LABELS), bins=2)
    expected = [[2.0, 2.0], [0.4 + 0.45, 0.7 + 0.9], [1.0, 1.0]]
    assert stats.shape == (3, 2) and torch.allclose(stats, torch.tensor(expected, dtype=F64), atol=1e-15)
    # (|1 - 0.85| + |1 - 1.6|) / 4
    assert abs(expected_calibration_error(stats).item() - 0.1875) < 1e-15
    # the bins are closed on the left; confidence 1.0 falls in the last one
    edge = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]], dtype=F64)
    counts = calibration_bins(edge, torch.tensor([0, 1, 2]), bins=10)[0]
    assert counts.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1]


def test_calibration_bins_add_over_tasks():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 30, 5, generator=generator, dtype=F64) * 2  # tasks, particles, points, classes
    labels = torch.randint(5, (6, 30), generator=generator)
    probabilities = vmap(mixture_probabilities)(logits)
    per_task = vmap(calibration_bins)(probabilities, labels)
    assert per_task.shape == (6, 3, 10)
    pooled = calibration_bins(probabilities.reshape(-1, 5), labels.reshape(-1))
    assert torch.allclose(per_task.sum(0), pooled, atol=1e-12)
    assert per_task[:, 0].sum().item() == 180
    confidence, prediction = probabilities.max(-1)
    assert abs(per_task[:, 1].sum().item() - confidence.sum().item()) < 1e-10
    assert per_task[:, 2].sum().item() == (prediction == labels).sum().item()


def ece_of_pooled(stats: torch.Tensor) -> torch.Tensor:
    return expected_calibration_error(stats.sum(0))


def test_bootstrap_interval_is_a_function_of_the_seed_and_contains_the_statistic():
    generator = torch.Generator().manual_seed(1)
    # an overconfident model: confidence about 0.9, accuracy about 0.6
    confidence = 0.85 + 0.1 * torch.rand(40, 25, generator=generator, dtype=F64)
    correct = torch.rand(40, 25, generator=generator, dtype=F64) < 0.6
    probabilities = torch.stack([confidence, 1 - confidence], -1)
    labels = torch.where(correct, 0, 1)
    per_task = vmap(lambda p, y: calibration_bins(p, y, bins=5))(probabilities, labels)
    first = bootstrap_interval(per_task, ece_of_pooled, resamples=300, seed=7)
    assert first == bootstrap_interval(per_task, ece_of_pooled, resamples=300, seed=7)
    assert first != bootstrap_interval(per_task, ece_of_pooled, resamples=300, seed=8)
    value, low, high = first
    assert all(isinstance(v, float) for v in first)
    assert abs(value - ece_of_pooled(per_task).item()) < 1e-15
    assert low < value < high and high - low < 0.2
    assert abs(value - (confidence.mean() - correct.double().mean()).item()) < 1e-12  # one bin: |conf - acc|
    # the mean of T values: the interval is about mean +- 1.96 sd / sqrt(T); a constant has none
    values = torch.randn(200, generator=generator, dtype=F64)
    mean, low, high = bootstrap_interval(values, torch.mean, resamples=2000, seed=0)
    half = 1.96 * values.std(correction=0).item() / math.sqrt(200)
    assert low < mean < high and abs((high - low) / 2 - half) < 0.15 * half
    assert bootstrap_interval(torch.full((5,), 2.5), torch.mean, resamples=50) == (2.5, 2.5, 2.5)


def test_per_task_functions_run_under_vmap_over_tasks():
    generator = torch.Generator().manual_seed(2)
    means = torch.randn(3, 4, 6, 2, generator=generator, dtype=F64)  # tasks, particles, points, event
    stds = 0.2 + torch.rand(3, 4, 1, 1, generator=generator, dtype=F64)
    y = torch.randn(3, 6, 2, generator=generator, dtype=F64)
    logits = torch.randn(3, 4, 6, 5, generator=generator, dtype=F64)
    labels = torch.randint(5, (3, 6), generator=generator)
    regression = {
        "log_density": gaussian_mixture_log_density,
        "nll": gaussian_mixture_nll,
        "cdf": gaussian_mixture_cdf,
        "quantile": lambda m, s, y: gaussian_mixture_quantile(m, s, 0.8),
        "coverage": interval_coverage,
        "mean": lambda m, s, y: mixture_mean(m),
        "variance": lambda m, s, y: mixture_variance(m, s),
    }
    for name, function in regression.items():
        mapped = vmap(function)(means, stds, y)
        looped = torch.stack([function(means[t], stds[t], y[t]) for t in range(3)])
        assert torch.allclose(mapped, looped, atol=1e-12, rtol=0), name
    classification = {
        "probabilities": lambda z, y: mixture_probabilities(z),
        "nll": categorical_mixture_nll,
        "bins": lambda z, y: calibration_bins(mixture_probabilities(z), y),
        "ece": lambda z, y: expected_calibration_error(calibration_bins(mixture_probabilities(z), y, bins=4)),
    }
    for name, function in classification.items():
        mapped = vmap(function)(logits, labels)
        looped = torch.stack([function(logits[t], labels[t]) for t in range(3)])
        assert torch.allclose(mapped, looped, atol=1e-12, rtol=0), name


def figure_inputs() -> tuple[dict, list[dict]]:
    stats = calibration_bins(torch.tensor(PROBABILITIES, dtype=F64), torch.tensor(LABELS), bins=4)
    x = torch.linspace(-5, 5, 50, dtype=F64)
    panels = [
        {
            "x_grid": x,
            "true_y": torch.sin(x + phase),
            "support_x": torch.tensor([-2.0, 0.0, 1.0]),
            "support_y": torch.sin(torch.tensor([-2.0, 0.0, 1.0]) + phase),
            "mean": torch.sin(x + phase) * 0.9,
            "lower": torch.sin(x + phase) - 0.5,
            "upper": torch.sin(x + phase) + 0.5,
            "title": f"phase {phase}",
        }
        for phase in (0.0, 1.0)
    ]
    return {"maml": stats, "bayesian maml": stats * 2}, panels


def test_figures_write_png_files(tmp_path):
    stats, panels = figure_inputs()
    reliability = plot_reliability_diagram(stats, tmp_path / "reliability.png")
    predictive = plot_posterior_predictive(panels, tmp_path / "predictive.png")
    for path, name in ((reliability, "reliability.png"), (predictive, "predictive.png")):
        assert path == tmp_path / name
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 5000


def test_figures_return_none_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on an install without the plots extra
    monkeypatch.setattr(extras, "_warned", set())
    stats, panels = figure_inputs()
    assert plot_reliability_diagram(stats, tmp_path / "reliability.png") is None
    assert plot_posterior_predictive(panels, tmp_path / "predictive.png") is None
    assert list(tmp_path.iterdir()) == []
    assert (
        capsys.readouterr().err == 'torchmaml: note: Plots need matplotlib: pip install "torchmaml[plots]"; skipped\n'
    )


def test_figures_reject_empty_or_incomplete_input(tmp_path):
    with pytest.raises(ValueError, match="at least one model"):
        plot_reliability_diagram({}, tmp_path / "r.png")
    _, panels = figure_inputs()
    del panels[1]["upper"]
    with pytest.raises(ValueError, match=r"panel 1 .* lacks upper"):
        plot_posterior_predictive(panels, tmp_path / "p.png")
