"""The two few-shot classification baselines MAML is compared with (Liu et al. 2020; Chen et al. 2019):

- **pretrained, then fine-tuned**: the benchmark's network with one output per *training class* is trained
  jointly on every training example (cross-entropy, Adam, mini-batches of ``batch_size`` examples drawn with
  replacement); for a task its ``head`` is replaced by a zero-initialised ``ways``-way linear layer and every
  parameter is fine-tuned on the support set by SGD;
- **from scratch**: the benchmark's freshly initialised network, fine-tuned on the support set by SGD.

Both return a ``MetaLearner`` with no meta-learning (``inner_steps=0``) whose ``query_metric`` fine-tunes for
the meta-test's step counts, so the three methods are measured by the same code on the same tasks
(``torchmaml.evaluate``). The fine-tuning rate is chosen on validation tasks (``tune_fine_tuning_lr``).

The network must name its output layer ``head`` (an ``nn.Linear``), as ``torchmaml.models.sequence`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchmaml.benchmark import FewShotClassification, benchmark_of, dtype_of
from torchmaml.config import TrainConfig
from torchmaml.learner import MetaLearner
from torchmaml.run.seeds import model_seed


def pretrain(config: TrainConfig, iterations: int, batch_size: int = 64, lr: float = 3e-3) -> nn.Module:
    """The benchmark's network trained jointly on all training classes (one output each); deterministic
    given ``config.seed``."""
    benchmark = benchmark_of(config)
    if not isinstance(benchmark, FewShotClassification):
        raise ValueError(f"the pretrained baseline needs a classification benchmark, not {config.benchmark!r}")
    examples, _ = benchmark.classes(config, "train")
    inputs = torch.cat(examples).to(config.device)
    labels = torch.cat([torch.full((len(x),), c) for c, x in enumerate(examples)]).to(config.device)
    generator = torch.Generator().manual_seed(model_seed(config.seed) + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed(config.seed))
        model = _network(config, len(examples))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(iterations):
        pick = torch.randint(len(labels), (batch_size,), generator=generator).to(config.device)
        optimizer.zero_grad()
        F.cross_entropy(model(inputs[pick]), labels[pick]).backward()
        optimizer.step()
    return model


def fine_tuned(config: TrainConfig, model: nn.Module) -> MetaLearner:
    """``model`` with a zero-initialised ``ways``-way head, fine-tuned (all parameters) on each support set."""
    head = model.head
    model.head = nn.Linear(head.in_features, config.ways).to(dtype=head.weight.dtype, device=head.weight.device)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return _fine_tuner(config, model)


def from_scratch(config: TrainConfig) -> MetaLearner:
    """The benchmark's network, freshly initialised (seeded by ``config.seed``), fine-tuned on each support set."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed(config.seed))
        model = _network(config, config.ways)
    return _fine_tuner(config, model)


def _network(config: TrainConfig, outputs: int) -> nn.Module:
    model = benchmark_of(config).model(config.model_copy(update={"ways": outputs}))
    return model.to(dtype=dtype_of(config), device=config.device)


def _fine_tuner(config: TrainConfig, model: nn.Module) -> MetaLearner:
    return MetaLearner(
        model, loss=benchmark_of(config).loss, inner_lr=config.inner_lr, inner_steps=0, strategy=config.strategy
    )
