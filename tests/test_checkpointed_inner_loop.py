"""``estimator_options={"checkpoint": True}``: the unrolled gradient by reverse recomputation of the inner
steps equals the ordinary unrolled gradient (params and learned rates), and keeps less memory alive."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import INNER_LOOP_VARIANTS, flat, small_convnet, small_mlp

from torchmaml import MetaLearner, TaskBatch
from torchmaml.errors import ConfigError
from torchmaml.estimators import get_estimator
from torchmaml.models.conv4 import MetaBatchNorm2d


def regression_batch(tasks=3) -> TaskBatch:
    return TaskBatch(*(torch.randn(tasks, n, 1, dtype=torch.float64) for n in (6, 6, 7, 7)))


def image_batch(tasks=2, ways=3) -> TaskBatch:
    labels = torch.arange(ways).repeat_interleave(2).expand(tasks, -1).clone()
    images = [torch.randn(tasks, ways * 2, 1, 8, 8, dtype=torch.float64) for _ in range(2)]
    return TaskBatch(images[0], labels, images[1], labels)


def gradients(learner: MetaLearner, batch: TaskBatch) -> dict[str, torch.Tensor]:
    grads, metrics = learner.meta_gradient(batch, loss_before=True)
    flat_grads = {group: flat(grads[group].values()) for group in ("params", "lrs") if grads[group]}
    return {**flat_grads, **{name: metrics[name] for name in ("loss_before", "loss_after")}}


def assert_same(checkpointed: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> None:
    assert checkpointed.keys() == exact.keys()
    for key, value in exact.items():
        assert torch.allclose(checkpointed[key], value, rtol=1e-10, atol=1e-12), key


@pytest.mark.parametrize("options,step_weights", INNER_LOOP_VARIANTS)
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_checkpointed_equals_unrolled_on_an_mlp(options, step_weights, strategy):
    model, batch = small_mlp(), regression_batch()
    results = []
    for checkpoint in (False, True):
        learner = MetaLearner(
            model, F.mse_loss, 0.1, 3, "unrolled", strategy, estimator_options={"checkpoint": checkpoint}, **options
        )
        learner.step_weights = step_weights
        results.append(gradients(learner, batch))
    assert results[0]["params"].norm() > 0
    assert_same(results[1], results[0])


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_checkpointed_equals_unrolled_on_a_convnet_with_per_step_batch_norm(steps):
    torch.manual_seed(0)
    model = small_convnet()
    for index, layer in enumerate(model):
        if isinstance(layer, MetaBatchNorm2d):
            model[index] = MetaBatchNorm2d(3, steps=max(steps, 1)).double()
            with torch.no_grad():
                model[index].weight.uniform_(0.5, 1.5)
    batch = image_batch()
    results = [
        gradients(
            MetaLearner(model, F.cross_entropy, 0.3, steps, "unrolled", "loop", estimator_options={"checkpoint": c}),
            batch,
        )
        for c in (False, True)
    ]
    assert_same(results[1], results[0])


def test_checkpoint_is_an_option_of_the_unrolled_estimator_only():
    assert get_estimator("unrolled", {"checkpoint": True}).checkpoint
    with pytest.raises(ConfigError, match="checkpoint"):
        get_estimator("hessian_free", {"checkpoint": True})


PEAK_MEMORY_SCRIPT = """
import resource, sys, torch, torch.nn.functional as F
from torchmaml import MetaLearner, TaskBatch
checkpoint = sys.argv[1] == "1"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(1, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(),
                            torch.nn.Linear(256, 1))
batch = TaskBatch(*(torch.randn(1, 8192, 1) for _ in range(4)))
for steps in (1, 8):
    options = {"checkpoint": checkpoint}
    MetaLearner(model, F.mse_loss, 0.01, steps, "unrolled", "loop", estimator_options=options).meta_gradient(batch)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_checkpointed_peak_memory_is_flat_in_the_number_of_steps():
    """Growth of a fresh process's peak RSS (KiB) from a 1-step to an 8-step meta-gradient: ~linear in K
    unrolled (every step's activations stay alive for the outer backward pass), none with checkpointing (one
    step's graph at a time). glibc returns freed blocks at once (``MALLOC_MMAP_THRESHOLD_``), so RSS follows
    live memory; the batch is large enough that the 1-step peak is above the peak of importing torch."""

    def growth_kib(checkpoint: bool) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
        command = [sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(int(checkpoint))]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        one, eight = map(int, done.stdout.split())
        return eight - one

    growth_unrolled, growth_checkpointed = growth_kib(False), growth_kib(True)
    assert growth_unrolled > 100_000  # measured 290 MB for 7 more steps (~40 MB per step)
    assert growth_checkpointed < growth_unrolled / 5  # measured 2 MB
