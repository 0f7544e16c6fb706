"""From a validated ``TrainConfig`` to the objects a run needs: data, model, learner, optimiser, evaluation tasks.

Benchmarks: ``sinusoid`` (regression, MSE), ``omniglot`` and ``folder`` (N-way K-shot classification with
conv4, accuracy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torchmaml.config import TrainConfig
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.folder import load_image_folder, split_classes
from torchmaml.data.omniglot import load_omniglot
from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.learner import MetaLearner
from torchmaml.models.conv4 import conv4
from torchmaml.models.mlp import mlp
from torchmaml.optim import HypergradientSGD
from torchmaml.run import seeds
from torchmaml.run.seeds import evaluation_stream, model_seed, theory_stream
from torchmaml.tasks import TaskBatch, TaskSource
from torchmaml.theory.step_size import STEP_SIZE_CONSTANTS, TheoryStepSize

MAML = "maml"
PRETRAINED = "pretrained"
EVAL_CHUNK = 50  # tasks per evaluation batch: bounds the memory of 600 many-way tasks


@dataclass(frozen=True)
class Metric:
    """How adapted models are scored: ``fn(prediction, target) -> scalar`` per task."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    higher_is_better: bool


def accuracy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of examples whose arg-max logit is the target class."""
    return (prediction.argmax(-1) == target).to(prediction.dtype).mean()


def is_classification(config: TrainConfig) -> bool:
    return config.benchmark != "sinusoid"


def metric_of(config: TrainConfig) -> Metric:
    if is_classification(config):
        return Metric("accuracy", accuracy, higher_is_better=True)
    return Metric("mse", F.mse_loss, higher_is_better=False)


def dtype_of(config: TrainConfig) -> torch.dtype:
    return getattr(torch, config.dtype)


@functools.lru_cache(maxsize=2)
def _images(benchmark: str, data_dir: str, download: bool, cache_dir: str | None, image_size: int, color: str):
    if benchmark == "omniglot":
        return load_omniglot(data_dir, download=download, image_size=image_size, cache_dir=cache_dir)
    return load_image_folder(data_dir, mode=color, image_size=image_size, cache_dir=cache_dir)


def build_tasks(config: TrainConfig, part: str = "train") -> TaskSource:
    """The task source of a split part (``train``, ``val``, ``test``; sinusoid has one task family)."""
    if config.benchmark == "sinusoid":
        return SinusoidTasks(config.support_size, config.query_size, dtype=dtype_of(config))
    data = _images(
        config.benchmark, config.data_dir, config.download, config.cache_dir, config.image_size, config.color
    )
    if config.benchmark == "omniglot":
        images, names = data.split_images(config.split, part), data.split_classes(config.split, part)
    else:  # the whole folder is checked first (ways, images per class), then split by class
        FewShotTasks(list(data.images), config.ways, config.shots, config.queries, class_names=data.class_names)
        chosen = folder_split(config, list(data.class_names))[part]
        images, names = [data.images[c] for c in chosen], [data.class_names[c] for c in chosen]
    return FewShotTasks(images, config.ways, config.shots, config.queries, class_names=names, dtype=dtype_of(config))


def folder_split(config: TrainConfig, class_names: list[str]) -> dict[str, list[int]]:
    """The folder benchmark's disjoint train/val/test classes (``class_fractions``, ``split_seed``)."""
    return split_classes(
        class_names, config.class_fractions, config.split_seed, config.ways, validate=config.validate_every > 0
    )


def split_summary(config: TrainConfig) -> dict:
    """What ``evaluate`` tells about the classes it tested on: the split's name and its class counts."""
    data = _images(
        config.benchmark, config.data_dir, config.download, config.cache_dir, config.image_size, config.color
    )
    if config.benchmark == "omniglot":
        counts = {part: len(data.split_classes(config.split, part)) for part in ("train", "val", "test")}
        return {"split": config.split, "classes": counts}
    parts = folder_split(config, list(data.class_names))
    return {
        "split": "classes",
        "class_fractions": config.class_fractions,
        "split_seed": config.split_seed,
        "classes": {part: len(indices) for part, indices in parts.items()},
        "test_classes": [data.class_names[c] for c in parts["test"]],
    }


def build_model(config: TrainConfig) -> nn.Module:
    """The benchmark's network: the sinusoid MLP or conv4."""
    if config.benchmark == "sinusoid":
        return mlp(1, config.hidden, 1)
    channels = 1 if config.benchmark == "omniglot" or config.color == "L" else 3
    bn_steps = config.inner_steps if config.batch_norm == "per_step" else None
    return conv4(config.ways, channels, config.filters, config.image_size, config.strided, bn_steps)


def build_learner(config: TrainConfig, kind: str = MAML) -> MetaLearner:
    """A freshly initialised learner (seeded from ``config.seed``; the global random generator is untouched).

    ``kind="pretrained"`` is the paper's baseline: the same network trained jointly on all tasks, which is
    MAML with zero inner steps.
    """
    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(model_seed(config.seed))
        model = build_model(config).to(dtype=dtype_of(config), device=config.device)
    return MetaLearner(
        model,
        loss=F.cross_entropy if is_classification(config) else F.mse_loss,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps if kind == MAML else 0,
        estimator=config.estimator,
        strategy=config.strategy,
        chunk_size=config.chunk_size,
        estimator_options=config.estimator_options,
        inner_lr_mode=config.inner_lr_mode if kind == MAML else "fixed",
        adapt_only=config.adapt_only,
        compile=config.compile,
    )


def evaluation_batches(
    config: TrainConfig, split: str = "test", tasks: int | None = None
) -> dict[int, list[TaskBatch]]:
    """Held-out tasks by support size (K-shot), in chunks of at most ``EVAL_CHUNK`` tasks.

    Sinusoid: the same ``eval_tasks`` functions for every size in ``eval_support_sizes``; ``split =
    "validation"`` draws a different, equally sized set. Classification: ``eval_tasks`` tasks of the split
    part ``test`` (``"validation"``: part ``val``, ``val_tasks`` tasks) with the run's ways and shots.
    """
    generator = seeds.generator(evaluation_stream(config.eval_seed, split))
    if config.benchmark == "sinusoid":
        count = tasks or config.eval_tasks
        source = SinusoidTasks(dtype=dtype_of(config))
        amplitude, phase = source.sample_functions(count, generator)
        return {
            k: list(_chunks(source.batch_for(amplitude, phase, k, config.eval_query_size, generator), config))
            for k in config.eval_support_sizes
        }
    count = tasks or (config.val_tasks if split == "validation" else config.eval_tasks)
    source = build_tasks(config, "val" if split == "validation" else "test")
    sizes = [min(EVAL_CHUNK, count - start) for start in range(0, count, EVAL_CHUNK)]
    return {config.shots: [source.sample(size, generator).to(device=config.device) for size in sizes]}


def _chunks(batch: TaskBatch, config: TrainConfig) -> Iterator[TaskBatch]:
    for chunk in batch.chunks(EVAL_CHUNK):
        yield chunk.to(device=config.device)


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
        seed=theory_stream(config.seed),
        smoothness=config.theory_smoothness,
        hessian_lipschitz=config.theory_hessian_lipschitz,
    )


def stationarity_batch(config: TrainConfig) -> TaskBatch:
    """The large fixed batch of tasks on which ``||grad F(w)||`` is monitored."""
    generator = seeds.generator(evaluation_stream(config.eval_seed, "stationarity"))
    return build_tasks(config).sample(config.stationarity_tasks, generator).to(device=config.device)
