"""From a validated ``TrainConfig`` to the objects a run needs: task source, model, learner, evaluation tasks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torchmaml.config import TrainConfig
from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.learner import MetaLearner
from torchmaml.models.mlp import mlp
from torchmaml.optim import HypergradientSGD
from torchmaml.tasks import TaskBatch
from torchmaml.theory.step_size import STEP_SIZE_CONSTANTS, TheoryStepSize

MAML = "maml"
PRETRAINED = "pretrained"


def dtype_of(config: TrainConfig) -> torch.dtype:
    return getattr(torch, config.dtype)


def build_tasks(config: TrainConfig) -> SinusoidTasks:
    """The training task source."""
    return SinusoidTasks(config.support_size, config.query_size, dtype=dtype_of(config))


def build_learner(config: TrainConfig, kind: str = MAML) -> MetaLearner:
    """A freshly initialised learner (seeded from ``config.seed``).

    ``kind="pretrained"`` is the paper's baseline: the same network trained jointly on all tasks, which is
    MAML with zero inner steps.
    """
    torch.manual_seed(config.seed)
    model = mlp(1, config.hidden, 1).to(dtype=dtype_of(config), device=config.device)
    return MetaLearner(
        model,
        loss=F.mse_loss,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps if kind == MAML else 0,
        estimator=config.estimator,
        estimator_options=config.estimator_options,
        inner_lr_mode=config.inner_lr_mode if kind == MAML else "fixed",
        adapt_only=config.adapt_only,
        strategy=config.strategy,
        chunk_size=config.chunk_size,
    )


def evaluation_batches(config: TrainConfig, split: str = "test") -> dict[int, TaskBatch]:
    """Held-out tasks, one batch per evaluation support size, the same tasks for every size.

    ``split="validation"`` draws a different, equally sized set (used to tune the baseline's fine-tuning
    step size), never the test tasks.
    """
    offset = {"test": 0, "validation": 1}[split]
    generator = torch.Generator().manual_seed(config.eval_seed * 2 + offset)
    tasks = SinusoidTasks(dtype=dtype_of(config))
    amplitude, phase = tasks.sample_functions(config.eval_tasks, generator)
    return {
        k: tasks.batch_for(amplitude, phase, k, config.eval_query_size, generator).to(device=config.device)
        for k in config.eval_support_sizes
    }


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


def build_step_rule(config: TrainConfig, kind: str) -> TheoryStepSize | None:
    """The theory-guided step size (``outer_optimizer = "theory"``), or ``None``."""
    if config.outer_optimizer != "theory":
        return None
    estimator = config.estimator if kind == MAML else "first_order"  # no inner steps: any constant fits
    c = config.theory_c if config.theory_c is not None else STEP_SIZE_CONSTANTS[estimator]
    return TheoryStepSize(
        build_tasks(config),
        config.theory_batch_size,
        c,
        seed=config.seed * 2 + 1_000_003,
        smoothness=config.theory_smoothness,
        hessian_lipschitz=config.theory_hessian_lipschitz,
    )


def stationarity_batch(config: TrainConfig) -> TaskBatch:
    """The large fixed batch of tasks on which ``||grad F(w)||`` is monitored."""
    generator = torch.Generator().manual_seed(config.eval_seed * 2 + 7)
    return build_tasks(config).sample(config.stationarity_tasks, generator).to(device=config.device)
