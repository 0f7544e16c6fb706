"""Likelihoods of a particle ensemble: the loss its particles are adapted and meta-trained with, and how the
ensemble's predictive distribution is scored.

A ``Particles`` ensemble predicts ``{"outputs": [M, N, ...], ...}``: every particle's network output and the
likelihood's own per-particle parameters (a learned noise scale). For particle ``m`` and a set of ``N`` examples

    Gaussian (regression):      -log p(y | x, theta_m) = (y - mu_m(x))^2 / (2 sigma_m^2) + log sigma_m + log(2 pi) / 2
    categorical (classification): -log p(y | x, theta_m) = -log softmax(logits_m(x))_y

and the ensemble's loss is ``sum_m (1/N) sum_n -log p(y_n | x_n, theta_m)``: its gradient with respect to
particle ``m`` is that particle's own mean negative log-likelihood gradient, so gradient steps on it adapt every
particle independently (an ensemble of MAMLs), and ``-N`` times it is the likelihood part of particle ``m``'s SVGD
score. The ensemble's predictive distribution is the mixture ``(1/M) sum_m p(y | x, theta_m)``; its negative
log-likelihood per example (``predictive_nll``) is the Bayesian fast-adaptation meta-loss and an evaluation score.
The noise ``sigma_m`` is fixed (``noise_std``) or a particle coordinate ``log sigma_m`` that the inner loop adapts
and the meta-learner initialises (``noise_std=None``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from torchmaml.bayesian import uncertainty
from torchmaml.errors import ConfigError

ParticlePrediction = dict[str, torch.Tensor]
COVERAGE_LEVEL = 0.9


class GaussianLikelihood:
    """``y ~ N(mu_theta(x), sigma^2)`` per particle: a fixed ``noise_std``, or (``None``) a learned ``log sigma``
    per particle starting at ``log(init_std)`` (module docstring)."""

    def __init__(self, noise_std: float | None = None, init_std: float = 1.0) -> None:
        for name, value in (("noise_std", noise_std), ("init_std", init_std)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}: must be a number > 0, got {value!r}")
        self.noise_std = noise_std
        self.init_std = init_std

    def particle_parameters(self) -> dict[str, torch.Tensor]:
        """The likelihood's own parameters, one value per particle (``Particles`` stacks them)."""
        return {} if self.noise_std is not None else {"log_std": torch.tensor(math.log(self.init_std))}

    def stds(self, prediction: ParticlePrediction) -> torch.Tensor:
        """``sigma_m`` shaped to broadcast against ``outputs`` (``[M, 1, ...]``)."""
        outputs = prediction["outputs"]
        shape = (outputs.shape[0],) + (1,) * (outputs.dim() - 1)
        if self.noise_std is not None:
            return torch.full(shape, self.noise_std, dtype=outputs.dtype, device=outputs.device)
        return prediction["log_std"].exp().reshape(shape)

    def __call__(self, prediction: ParticlePrediction, y: torch.Tensor) -> torch.Tensor:
        """The ensemble's loss ``sum_m mean_n -log p(y_n | x_n, theta_m)``."""
        means, stds = prediction["outputs"], self.stds(prediction)
        per_point = (y - means).pow(2) / (2 * stds.pow(2)) + stds.log() + 0.5 * math.log(2 * math.pi)
        return per_point.reshape(means.shape[0], -1).mean(1).sum()

    def predictive_nll(self, prediction: ParticlePrediction, y: torch.Tensor) -> torch.Tensor:
        """``-mean_n log (1/M) sum_m N(y_n; mu_m, sigma_m^2)``."""
        return uncertainty.gaussian_mixture_nll(prediction["outputs"], self.stds(prediction), y)

    def point(self, prediction: ParticlePrediction) -> torch.Tensor:
        """The point prediction scored by the benchmark's metric (the MSE): the mixture's mean."""
        return uncertainty.mixture_mean(prediction["outputs"])

    def scores(self, prediction: ParticlePrediction, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The uncertainty scores of one task: the predictive NLL and the coverage of the central 90% interval."""
        means, stds = prediction["outputs"], self.stds(prediction)
        return {
            "nll": uncertainty.gaussian_mixture_nll(means, stds, y),
            "coverage": uncertainty.interval_coverage(means, stds, y, COVERAGE_LEVEL),
        }


class CategoricalLikelihood:
    """``y ~ Categorical(softmax(logits_theta(x)))`` per particle (module docstring)."""

    bins = 10  # confidence bins of the calibration scores

    def particle_parameters(self) -> dict[str, torch.Tensor]:
        return {}

    def __call__(self, prediction: ParticlePrediction, y: torch.Tensor) -> torch.Tensor:
        """The ensemble's loss ``sum_m mean_n -log softmax(logits_m)_{y_n}``."""
        logits = prediction["outputs"]
        per_particle = F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]), reduction="none")
        return per_particle.reshape(logits.shape[0], -1).mean(1).sum()

    def predictive_nll(self, prediction: ParticlePrediction, y: torch.Tensor) -> torch.Tensor:
        """``-mean_n log (1/M) sum_m softmax(logits_m)_{y_n}``."""
        return uncertainty.categorical_mixture_nll(prediction["outputs"], y)

    def point(self, prediction: ParticlePrediction) -> torch.Tensor:
        """What the benchmark's metric (accuracy: the arg-max) scores: the log of the mixture's probabilities."""
        return uncertainty.mixture_probabilities(prediction["outputs"]).log()

    def scores(self, prediction: ParticlePrediction, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predictive NLL of one task and its calibration statistics (``uncertainty.calibration_bins``:
        count, summed confidence and summed correctness per confidence bin, pooled over tasks for the ECE)."""
        probabilities = uncertainty.mixture_probabilities(prediction["outputs"])
        return {
            "nll": uncertainty.categorical_mixture_nll(prediction["outputs"], y),
            "calibration": uncertainty.calibration_bins(probabilities, y, self.bins).reshape(-1),
        }


Likelihood = GaussianLikelihood | CategoricalLikelihood
