"""Active learning with an adapted particle ensemble (the Bayesian MAML paper's sinusoid experiment).

A task starts with a few labelled examples and a pool of unlabelled inputs. Each round the ensemble adapts to the
labelled set and the pool input of highest predictive variance,

    Var[y | x] = (1/M) sum_m sigma_m^2 + (1/M) sum_m (mu_m(x) - mean_m mu_m(x))^2       (law of total variance),

is labelled next; the baseline labels a random pool input instead. The score after each round is the MSE of the
adapted ensemble's predictive mean on held-out points of the task.
"""

from __future__ import annotations

import torch

from torchmaml.bayesian import uncertainty
from torchmaml.bayesian.likelihood import GaussianLikelihood
from torchmaml.learner import MetaLearner


def predictive_variance(learner: MetaLearner, fast: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``Var[y | x]`` of the adapted ensemble ``fast`` (``learner.adapt``'s result), per input: ``[len(x)]``."""
    likelihood = learner.loss
    if not isinstance(likelihood, GaussianLikelihood):
        raise TypeError("predictive variance is defined here for a Gaussian likelihood (regression)")
    with torch.no_grad():
        prediction = fast(x)
    variance = uncertainty.mixture_variance(prediction["outputs"], likelihood.stds(prediction))
    return variance.reshape(len(x), -1).sum(1)


def active_learning_curve(
    learner: MetaLearner,
    support: tuple[torch.Tensor, torch.Tensor],
    pool: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    rounds: int,
    steps: int,
    choose: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """Test MSE after ``0..rounds`` added labels (``[rounds + 1]``) on one task, labelling the pool input of highest
    predictive variance (``choose="variance"``) or a uniformly random one (``"random"``); a pool input is labelled
    at most once."""
    if choose not in ("variance", "random"):
        raise ValueError(f"choose: 'variance' or 'random', got {choose!r}")
    (labelled_x, labelled_y), (pool_x, pool_y), (test_x, test_y) = support, pool, test
    available = torch.ones(len(pool_x), dtype=torch.bool, device=pool_x.device)
    scores = []
    for round_ in range(rounds + 1):
        fast = learner.adapt(labelled_x, labelled_y, steps=steps)
        with torch.no_grad():
            scores.append((uncertainty.mixture_mean(fast(test_x)["outputs"]) - test_y).pow(2).mean())
        if round_ == rounds:
            break
        if choose == "variance":
            index = int(predictive_variance(learner, fast, pool_x).masked_fill(~available, -torch.inf).argmax())
        else:
            candidates = available.nonzero().flatten()
            index = int(candidates[torch.randint(len(candidates), (), generator=generator)])
        available[index] = False
        labelled_x = torch.cat([labelled_x, pool_x[index : index + 1]])
        labelled_y = torch.cat([labelled_y, pool_y[index : index + 1]])
    return torch.stack(scores)
