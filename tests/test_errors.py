"""Bad input gives a typed error that names the problem, never a traceback from deep inside torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchmaml import ConfigError, MetaLearner, ModelError, TaskBatch, TaskBatchError
from torchmaml.data import SinusoidTasks
from torchmaml.models import mlp


def good():
    return [torch.randn(2, 5, 1), torch.randn(2, 5, 1), torch.randn(2, 7, 1), torch.randn(2, 7, 1)]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda f: f.__setitem__(0, torch.randn(5, 1).numpy()), "must be a torch.Tensor"),
        (lambda f: f.__setitem__(0, torch.randn(5)), "task axis"),
        (lambda f: f.__setitem__(1, torch.randn(3, 5, 1)), "number of tasks"),
        (lambda f: f.__setitem__(3, torch.randn(2, 6, 1)), "query_y has 6"),
        (lambda f: f.__setitem__(2, torch.randn(2, 7, 2)), "must match"),
        (lambda f: (f.__setitem__(2, torch.randn(2, 0, 1)), f.__setitem__(3, torch.randn(2, 0, 1))), "no examples"),
        (lambda f: (f.__setitem__(0, torch.randn(2, 5, 0, 1)), f.__setitem__(2, torch.randn(2, 7, 0, 1))), "empty"),
        (lambda f: f.__setitem__(1, torch.randn(2, 5, 0)), "support_y has shape"),
    ],
)
def test_task_batch_shape_errors(mutate, match):
    fields = good()
    mutate(fields)
    with pytest.raises(TaskBatchError, match=match):
        TaskBatch(*fields)


def test_task_batch_chunks_and_slices():
    batch = TaskBatch(*(torch.randn(5, 3, 1) for _ in range(4)))
    sizes = [chunk.num_tasks for chunk in batch.chunks(2)]
    assert sizes == [2, 2, 1]
    assert torch.equal(batch.slice(1, 3).query_x, batch.query_x[1:3])


def test_model_output_not_fitting_the_targets():
    learner = MetaLearner(mlp(1, [8], 2), F.mse_loss)
    with pytest.raises(ModelError, match=r"output has shape \(5, 2\).*targets have shape \(5, 1\)"):
        learner.meta_step(TaskBatch(*good()), torch.optim.SGD(learner.parameters(), lr=0.1))


def test_model_that_cannot_take_the_inputs():
    learner = MetaLearner(mlp(3, [8], 1), F.mse_loss)
    with pytest.raises(ModelError, match=r"cannot take one task's support_x of shape \(5, 1\)"):
        learner.meta_gradient(TaskBatch(*good()))


def test_classification_targets_out_of_range():
    learner = MetaLearner(mlp(1, [8], 3), F.cross_entropy)
    labels = torch.full((2, 5), 7)
    with pytest.raises(ModelError, match="does not fit the loss"):
        learner.meta_gradient(TaskBatch(torch.randn(2, 5, 1), labels, torch.randn(2, 5, 1), labels))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"inner_lr": 0.0}, "inner_lr"),
        ({"inner_lr": -1.0}, "inner_lr"),
        ({"inner_steps": -1}, "inner_steps"),
        ({"estimator": "magic"}, "unknown estimator 'magic'"),
        ({"strategy": "fast"}, "unknown strategy 'fast'"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_learner_argument_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MetaLearner(mlp(), F.mse_loss, **kwargs)


def test_model_without_parameters():
    with pytest.raises(ModelError, match="no parameters"):
        MetaLearner(nn.Identity(), F.mse_loss)


def test_sinusoid_source_sizes():
    with pytest.raises(ConfigError, match="support_size"):
        SinusoidTasks(support_size=0)
    batch = SinusoidTasks(4, 6).sample(3, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (3, 4, 1) and batch.query_y.shape == (3, 6, 1)
    again = SinusoidTasks(4, 6).sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(batch.query_y, again.query_y)
    assert batch.support_x.min() >= -5 and batch.support_x.max() <= 5
    assert batch.support_y.abs().max() <= 5
