"""Bayesian MAML's meta-objectives (Kim, Yoon et al. 2018): the chaser loss and Bayesian fast adaptation.

Both meta-train the initial particles ``Theta_0`` of a ``torchmaml.bayesian.Particles`` ensemble whose inner loop is
SVGD (``torchmaml.bayesian.SVGD``), so that a few inner steps on a task's support set give a good posterior.

**Chaser loss.** The followers ``Theta_n`` take the ``n`` inner steps on the support set ``D_in``; the leaders
continue from them for ``s`` more steps on the support and query sets together, ``Theta_{n+s} =
SVGD_s(Theta_n; D_in ∪ D_o)``, an approximation of the posterior given more data. The followers chase the leaders:

    L_i(Theta_0) = d(Theta_n, stopgrad(Theta_{n+s})) = sum_m ||theta_n^m - theta_{n+s}^m||^2,

summed over the network's weights. The loss is differentiated through the followers' inner steps
(``first_order=True``: ``d Theta_n / d Theta_0 = I``, the gradient ``2 (Theta_n - Theta_{n+s})``). The leaders take
the last inner step's rate.

The likelihood's own particle coordinates (``noise.*``, a learned noise scale ``log sigma``) are adapted by the inner
steps like the weights, but the distance is no objective for their initial values: a larger noise scales every
likelihood gradient down by ``1 / sigma^2``, so the leaders move less and the distance shrinks without the
posterior getting any better. ``noise_objective`` says what meta-trains them:

- ``"predictive"`` (default): the query set's predictive negative log-likelihood under the followers (Bayesian fast
  adaptation's objective, below), ``d/d log sigma_0 [-(1/N) sum_n log (1/M) sum_m p(y_n | x_n, theta_n^m)]``; the
  weights still take the distance's gradient only. It calibrates the noise for the posterior the followers reach.
- ``"excluded"``: the noise is left out of the distance, as in the authors' code; its initial value moves only
  through the distance's dependence on it (and drifts up, for the reason above).
- ``"chased"``: the noise is part of the distance (it inflates until nothing moves).

**Bayesian fast adaptation** (``PredictiveLikelihood``): the predictive negative log-likelihood of the query set under
the adapted ensemble, ``-(1/N) sum_n log (1/M) sum_m p(y_n | x_n, theta_n^m)``, differentiated through the inner
steps. It needs the ensemble's likelihood as the loss (``loss_fn.predictive_nll``).

Both report ``loss_after``, the ensemble's loss (``sum_m`` of the particles' mean negative log-likelihoods) on the
query set after the inner steps; the chaser also reports its distance, ``chaser_distance``, and, where it
meta-trains a learned noise by it, the followers' ``predictive_nll``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import torch
from torch.func import grad, vjp
from torch.utils._pytree import tree_map

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task

if TYPE_CHECKING:
    from torchmaml.learner import MetaLearner
    from torchmaml.tasks import TaskBatch


LIKELIHOOD_PREFIX = "noise."  # where torchmaml.bayesian.Particles keeps its likelihood's per-particle parameters
NoiseObjective = Literal["predictive", "excluded", "chased"]


@dataclass(frozen=True)
class Chaser(Estimator):
    """The chaser loss's meta-gradient of one task (module docstring); ``leader_steps`` is ``s``, ``noise_objective``
    what meta-trains a learned noise."""

    differentiates_inner_loop: ClassVar[bool] = True
    supports_inner_update: ClassVar[bool] = True

    leader_steps: int = 1
    first_order: bool = False
    noise_objective: NoiseObjective = "predictive"

    def __post_init__(self) -> None:
        if isinstance(self.leader_steps, bool) or not isinstance(self.leader_steps, int) or self.leader_steps < 1:
            raise ConfigError(f"leader_steps: must be an integer >= 1, got {self.leader_steps!r}")
        if self.noise_objective not in get_args(NoiseObjective):
            choices = ", ".join(repr(c) for c in get_args(NoiseObjective))
            raise ConfigError(f"noise_objective: must be one of {choices}, got {self.noise_objective!r}")

    def prepare(self, learner: MetaLearner, batch: TaskBatch) -> None:
        if learner.inner_steps < 1:
            raise ConfigError("estimator 'chaser': the followers need inner steps; set inner_steps >= 1")
        if self.noise_objective == "predictive" and not hasattr(learner.loss, "predictive_nll"):
            learned_noise = any(name.startswith(LIKELIHOOD_PREFIX) for name, _ in learner.model.named_parameters())
            if learned_noise:
                raise ConfigError(
                    "estimator 'chaser': noise_objective 'predictive' needs a probabilistic loss; meta-learn "
                    "torchmaml.bayesian.Particles with loss=particles.likelihood, or set noise_objective='excluded'"
                )

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        support_x, support_y, query_x, query_y = task["support_x"], task["support_y"], task["query_x"], task["query_y"]
        every_x = tree_map(lambda s, q: torch.cat([s, q]), support_x, query_x)
        every_y = tree_map(lambda s, q: torch.cat([s, q]), support_y, query_y)
        last = problem.steps - 1
        calibrated = self.noise_objective == "predictive" and any(_is_noise(name) for name in meta["params"])

        def objectives(meta: MetaParams) -> tuple[tuple[torch.Tensor, torch.Tensor], Metrics]:
            followers = problem.trajectory(meta, support_x, support_y, first_order=self.first_order)[-1]
            leaders = {name: p.detach() for name, p in followers.items()}
            rates = {name: r.detach() for name, r in meta["lrs"].items()}
            for _ in range(self.leader_steps):
                leaders = {name: p.detach() for name, p in problem.step(leaders, rates, every_x, every_y, last).items()}
            chased = [name for name in followers if self.noise_objective == "chased" or not _is_noise(name)]
            distance = sum((followers[name] - leaders[name]).pow(2).sum() for name in chased)
            metrics = {"chaser_distance": distance.detach()}
            if calibrated:
                prediction = problem.model(followers, query_x, problem.context)
                nll = problem.loss_fn.predictive_nll(prediction, query_y)
                metrics |= {"loss_after": problem.loss_fn(prediction, query_y).detach(), "predictive_nll": nll.detach()}
            else:
                nll = torch.zeros_like(distance)
                with torch.no_grad():
                    metrics["loss_after"] = problem.loss(followers, query_x, query_y)
            return (distance, nll), metrics

        if calibrated:
            (distance, nll), pullback, metrics = vjp(objectives, meta, has_aux=True)
            (chaser_grads,) = pullback((torch.ones_like(distance), torch.zeros_like(nll)))
            (nll_grads,) = pullback((torch.zeros_like(distance), torch.ones_like(nll)))
            grads = {
                group: {name: (nll_grads if _is_noise(name) else chaser_grads)[group][name] for name in values}
                for group, values in chaser_grads.items()
            }
        else:

            def distance(meta: MetaParams) -> tuple[torch.Tensor, Metrics]:
                (distance, _), metrics = objectives(meta)
                return distance, metrics

            grads, metrics = grad(distance, has_aux=True)(meta)
        if problem.track_loss_before:
            with torch.no_grad():
                metrics["loss_before"] = problem.loss(meta["params"], query_x, query_y, step=0)
        return grads, metrics


def _is_noise(name: str) -> bool:
    """Whether ``name`` is one of the likelihood's per-particle parameters (a learned noise), not a network weight."""
    return name.startswith(LIKELIHOOD_PREFIX)


@dataclass(frozen=True)
class PredictiveLikelihood(Estimator):
    """Bayesian fast adaptation's meta-gradient of one task (module docstring)."""

    differentiates_inner_loop: ClassVar[bool] = True
    supports_inner_update: ClassVar[bool] = True

    first_order: bool = False

    def prepare(self, learner: MetaLearner, batch: TaskBatch) -> None:
        if not hasattr(learner.loss, "predictive_nll"):
            raise ConfigError(
                "estimator 'predictive': the predictive likelihood needs a probabilistic loss; meta-learn "
                "torchmaml.bayesian.Particles with loss=particles.likelihood"
            )

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        query_x, query_y = task["query_x"], task["query_y"]

        def meta_loss(meta: MetaParams) -> tuple[torch.Tensor, Metrics]:
            adapted = problem.trajectory(meta, task["support_x"], task["support_y"], first_order=self.first_order)[-1]
            prediction = problem.model(adapted, query_x, problem.context)
            nll = problem.loss_fn.predictive_nll(prediction, query_y)
            return nll, {"loss_after": problem.loss_fn(prediction, query_y).detach(), "predictive_nll": nll.detach()}

        grads, metrics = grad(meta_loss, has_aux=True)(meta)
        if problem.track_loss_before:
            with torch.no_grad():
                metrics["loss_before"] = problem.loss(meta["params"], query_x, query_y, step=0)
        return grads, metrics
