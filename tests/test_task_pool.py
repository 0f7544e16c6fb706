"""A fixed, finite set of training tasks (``train_tasks``): drawn once from the seed, then sampled from."""

from __future__ import annotations

import pytest
import torch

from torchmaml.config import load_config
from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.errors import ConfigError
from torchmaml.experiment import training_tasks
from torchmaml.tasks import TaskPool


def pool_index(pool: TaskPool, support_x: torch.Tensor) -> int:
    """Which task of the pool has exactly these support inputs (-1: none)."""
    matches = [i for i in range(pool.count) if torch.equal(pool.tasks.support_x[i], support_x)]
    return matches[0] if len(matches) == 1 else -1


def test_a_pool_serves_only_its_own_tasks_with_their_examples():
    source = SinusoidTasks(4, 3, dtype=torch.float64)
    pool = TaskPool(source, 5, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(40):
        batch = pool.sample(3, generator)
        indices = [pool_index(pool, batch.support_x[i]) for i in range(3)]
        assert -1 not in indices and len(set(indices)) == 3  # the pool's tasks, distinct within a batch
        for position, index in enumerate(indices):  # every field of a task travels with it
            assert torch.equal(batch.query_y[position], pool.tasks.query_y[index])
        seen.update(indices)
    assert seen == set(range(5))
    larger = pool.sample(12, generator)  # more tasks than the pool holds: drawn with replacement
    assert all(pool_index(pool, larger.support_x[i]) >= 0 for i in range(12))
    same = TaskPool(source, 5, torch.Generator().manual_seed(0))
    assert torch.equal(same.tasks.support_y, pool.tasks.support_y)
    with pytest.raises(Exception, match="count must be an integer >= 1"):
        TaskPool(source, 0, generator)


def test_train_tasks_fixes_the_training_tasks_by_the_seed():
    pooled = training_tasks(load_config("sinusoid", ["train_tasks=7"]))
    assert isinstance(pooled, TaskPool) and pooled.count == 7
    again = training_tasks(load_config("sinusoid", ["train_tasks=7"]))
    other_seed = training_tasks(load_config("sinusoid", ["train_tasks=7", "seed=1"]))
    assert torch.equal(pooled.tasks.support_x, again.tasks.support_x)
    assert not torch.equal(pooled.tasks.support_x, other_seed.tasks.support_x)
    assert isinstance(training_tasks(load_config("sinusoid", [])), SinusoidTasks)
    with pytest.raises(ConfigError, match="train_tasks"):
        load_config("sinusoid", ["train_tasks=-1"])
