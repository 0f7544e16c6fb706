"""Bayesian MAML's meta-objectives (Kim, Yoon et al. 2018): the chaser loss and Bayesian fast adaptation.

Both meta-train the initial particles ``Theta_0`` of a ``torchmaml.bayesian.Particles`` ensemble whose inner loop is
SVGD (``torchmaml.bayesian.SVGD``), so that a few inner steps on a task's support set give a good posterior.

**Chaser loss.** The followers ``Theta_n`` take the ``n`` inner steps on the support set ``D_in``; the leaders
continue from them for ``s`` more steps on the support and query sets together, ``Theta_{n+s} =
SVGD_s(Theta_n; D_in ∪ D_o)``, an approximation of the posterior given more data. The followers chase the leaders:

    L_i(Theta_0) = d(Theta_n, stopgrad(Theta_{n+s})) = sum_m ||theta_n^m - theta_{n+s}^m||^2,

summed over the network's weights: the likelihood's own particle coordinates (``noise.*``, a learned noise scale)
are adapted by the inner steps but left out of the distance, as in the authors' code (``chase_noise=True``
includes them). The loss is differentiated through the followers' inner steps (``first_order=True``:
``d Theta_n / d Theta_0 = I``, the gradient ``2 (Theta_n - Theta_{n+s})``). The leaders take the last inner step's
rate.

**Bayesian fast adaptation** (``PredictiveLikelihood``): the predictive negative log-likelihood of the query set under
the adapted ensemble, ``-(1/N) sum_n log (1/M) sum_m p(y_n | x_n, theta_n^m)``, differentiated through the inner
steps. It needs the ensemble's likelihood as the loss (``loss_fn.predictive_nll``).

Both report ``loss_after``, the ensemble's loss (``sum_m`` of the particles' mean negative log-likelihoods) on the
query set after the inner steps; the chaser also reports its distance, ``chaser_distance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch.func import grad
from torch.utils._pytree import tree_map

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task

if TYPE_CHECKING:
    from torchmaml.learner import MetaLearner
    from torchmaml.tasks import TaskBatch


LIKELIHOOD_PREFIX = "noise."  # where torchmaml.bayesian.Particles keeps its likelihood's per-particle parameters


@dataclass(frozen=True)
class Chaser(Estimator):
    """The chaser loss's meta-gradient of one task (module docstring); ``leader_steps`` is ``s``."""

    differentiates_inner_loop: ClassVar[bool] = True
    supports_inner_update: ClassVar[bool] = True

    leader_steps: int = 1
    first_order: bool = False
    chase_noise: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.leader_steps, bool) or not isinstance(self.leader_steps, int) or self.leader_steps < 1:
            raise ConfigError(f"leader_steps: must be an integer >= 1, got {self.leader_steps!r}")

    def prepare(self, learner: MetaLearner, batch: TaskBatch) -> None:
        if learner.inner_steps < 1:
            raise ConfigError("estimator 'chaser': the followers need inner steps; set inner_steps >= 1")

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        support_x, support_y, query_x, query_y = task["support_x"], task["support_y"], task["query_x"], task["query_y"]
        every_x = tree_map(lambda s, q: torch.cat([s, q]), support_x, query_x)
        every_y = tree_map(lambda s, q: torch.cat([s, q]), support_y, query_y)
        last = problem.steps - 1

        def meta_loss(meta: MetaParams) -> tuple[torch.Tensor, Metrics]:
            followers = problem.trajectory(meta, support_x, support_y, first_order=self.first_order)[-1]
            leaders = {name: p.detach() for name, p in followers.items()}
            rates = {name: r.detach() for name, r in meta["lrs"].items()}
            for _ in range(self.leader_steps):
                leaders = {name: p.detach() for name, p in problem.step(leaders, rates, every_x, every_y, last).items()}
            chased = [name for name in followers if self.chase_noise or not name.startswith(LIKELIHOOD_PREFIX)]
            distance = sum((followers[name] - leaders[name]).pow(2).sum() for name in chased)
            with torch.no_grad():
                loss_after = problem.loss(followers, query_x, query_y)
            return distance, {"loss_after": loss_after.detach(), "chaser_distance": distance.detach()}

        grads, metrics = grad(meta_loss, has_aux=True)(meta)
        if problem.track_loss_before:
            with torch.no_grad():
                metrics["loss_before"] = problem.loss(meta["params"], query_x, query_y, step=0)
        return grads, metrics


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
