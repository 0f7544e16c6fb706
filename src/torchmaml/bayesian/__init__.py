"""Bayesian MAML (Kim, Yoon et al. 2018) for any model: particle ensembles adapted by SVGD.

    particles = Particles(model, count=5, likelihood=GaussianLikelihood())
    learner = MetaLearner(particles, loss=particles.likelihood, inner_lr=1e-3, inner_steps=1,
                          estimator="bfa", inner_update=SVGD(prior_std=1.0))

- ``Particles``: ``M`` stacked copies of the model, evaluated together (the meta-parameters ``Theta_0``);
- ``GaussianLikelihood`` / ``CategoricalLikelihood``: the ensemble's loss and predictive distribution;
- ``SVGD``: the inner update (Stein variational gradient descent on the task posterior);
- the meta-objectives are estimators: ``"chaser"`` (the chaser loss), ``"bfa"`` (Bayesian fast adaptation, the
  predictive likelihood); the ensemble of MAMLs (EMAML) is ``Particles`` with gradient inner steps and ``"unrolled"``;
- ``uncertainty``: predictive NLL, interval coverage, calibration (ECE) of an adapted ensemble.
"""

from torchmaml.bayesian.likelihood import CategoricalLikelihood, GaussianLikelihood, Likelihood, ParticlePrediction
from torchmaml.bayesian.particles import Particles
from torchmaml.bayesian.svgd import SVGD, median_bandwidth, svgd_direction

__all__ = [
    "SVGD",
    "CategoricalLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "ParticlePrediction",
    "Particles",
    "median_bandwidth",
    "svgd_direction",
]
