"""From a validated ``TrainConfig`` to the objects a supervised run needs: learner, optimiser, schedules, monitors.

What differs between task families (data, network, loss, metric) comes from the configuration's
``Benchmark`` (``torchmaml.benchmark``); this module composes it with the learner and the outer optimiser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from torchmaml.bayesian import SVGD, CategoricalLikelihood, GaussianLikelihood, Likelihood, Particles
from torchmaml.benchmark import Metric, benchmark_of, dtype_of
from torchmaml.config import TrainConfig
from torchmaml.learner import MetaLearner
from torchmaml.optim import HypergradientSGD
from torchmaml.run import seeds
from torchmaml.run.seeds import evaluation_stream, model_seed, pool_stream, theory_stream
from torchmaml.run.team import SOLO, Team
from torchmaml.tasks import TaskBatch, TaskPool, TaskSource
from torchmaml.theory.step_size import STEP_SIZE_CONSTANTS, TheoryStepSize

MAML = "maml"
PRETRAINED = "pretrained"


def build_learner(config: TrainConfig, kind: str = MAML) -> MetaLearner:
    """A freshly initialised learner (seeded from ``config.seed``; the global random generator is untouched).

    ``kind="pretrained"`` is the paper's baseline: the same network trained jointly on all tasks, which is
    MAML with zero inner steps.
    """
    benchmark = benchmark_of(config)
    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(model_seed(config.seed))
        model = benchmark.model(config)
        if config.particles:  # the other particles are drawn after the model, from the same seeded generator
            model = Particles(model, config.particles, likelihood_of(config))
        model = model.to(dtype=dtype_of(config), device=config.device)
    return MetaLearner(
        model,
        loss=model.likelihood if config.particles else benchmark.loss,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps if kind == MAML else 0,
        estimator=config.estimator,
        strategy=config.strategy,
        chunk_size=config.chunk_size,
        estimator_options=config.estimator_options,
        inner_lr_mode=config.inner_lr_mode if kind == MAML else "fixed",
        adapt_only=config.adapt_only,
        compile=config.compile,
        inner_update=SVGD(config.prior_std) if config.inner_update == "svgd" else None,
    )


def likelihood_of(config: TrainConfig) -> Likelihood:
    """The likelihood of a particle ensemble on the configured benchmark: categorical for classifiers, else
    Gaussian (noise ``noise_std``, or learned per particle from ``noise_init_std``)."""
    if benchmark_of(config).classification:
        return CategoricalLikelihood()
    return GaussianLikelihood(config.noise_std, config.noise_init_std)


def metric_of(config: TrainConfig) -> Metric:
    """The benchmark's metric; for a particle ensemble, of its point prediction (the predictive mixture's mean, or
    its most probable class)."""
    metric = benchmark_of(config).metric
    if not config.particles:
        return metric
    return dataclasses.replace(metric, fn=_PointMetric(likelihood_of(config), metric.fn))


@dataclasses.dataclass(frozen=True)
class _PointMetric:
    """``metric(likelihood.point(prediction), target)``: a pointwise metric of an ensemble's prediction."""

    likelihood: Likelihood
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, prediction: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return self.metric(self.likelihood.point(prediction), target)


def build_optimizer(config: TrainConfig, learner: MetaLearner) -> torch.optim.Optimizer:
    """The outer optimiser: Adam, SGD, or AlphaMAML's hypergradient SGD (outer rate tuned online; the
    learned inner rate stepped by SGD at ``alpha_hyper_lr``)."""
    if config.outer_optimizer == "adam":
        return torch.optim.Adam(learner.parameters(), lr=config.outer_lr)
    if config.outer_optimizer in ("sgd", "theory"):  # "theory" sets the rate before every step
        return torch.optim.SGD(learner.parameters(), lr=config.outer_lr)
    groups = [{"params": list(learner.model.parameters()), "lr": config.outer_lr, "hyper_lr": config.beta_hyper_lr}]
    rates = list(learner.inner_rate.parameters())
    if rates:
        groups.append({"params": rates, "lr": config.alpha_hyper_lr, "hyper_lr": 0.0})
    return HypergradientSGD(groups, lr=config.outer_lr)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, iterations: int):
    """Cosine annealing of the outer rate from ``outer_lr`` to ``min_outer_lr`` over the run, or ``None``."""
    if config.outer_lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=config.min_outer_lr)
    return None


def build_step_rule(config: TrainConfig, kind: str, team: Team = SOLO) -> TheoryStepSize | None:
    """The theory-guided step size (``outer_optimizer = "theory"``), or ``None``."""
    if config.outer_optimizer != "theory":
        return None
    estimator = config.estimator if kind == MAML else "first_order"  # no inner steps: any constant fits
    c = config.theory_c if config.theory_c is not None else STEP_SIZE_CONSTANTS[estimator]
    return TheoryStepSize(
        benchmark_of(config).tasks(config),
        config.theory_batch_size,
        c,
        seed=theory_stream(config.seed),
        smoothness=config.theory_smoothness,
        hessian_lipschitz=config.theory_hessian_lipschitz,
        process_group=team.group if team.distributed else None,
        every=config.theory_every,
    )


def training_tasks(config: TrainConfig) -> TaskSource:
    """Where the training phases draw their meta-batches: the benchmark's task family, or a fixed set of
    ``train_tasks`` of its tasks drawn once from the seed's pool stream (the same set for every phase)."""
    source = benchmark_of(config).tasks(config)
    if not config.train_tasks:
        return source
    return TaskPool(source, config.train_tasks, seeds.generator(pool_stream(config.seed)))


def stationarity_batch(config: TrainConfig) -> TaskBatch:
    """The large fixed batch of tasks on which ``||grad F(w)||`` is monitored."""
    generator = seeds.generator(evaluation_stream(config.eval_seed, "stationarity"))
    return benchmark_of(config).tasks(config).sample(config.stationarity_tasks, generator).to(device=config.device)
