"""Data parallel meta-learning (``torchmaml.distributed``) in processes of a real gloo group on loopback.

Each test starts two processes; each computes with its share of one global batch, and the result must equal
what one process computes with the whole batch (float64: relative difference <= 1e-9), written here as a
plain single-process call. Shares are uneven (5 tasks over 2 processes) so the task-count weighting is
exercised. The command-line tests (torchrun, faults, world sizes) are in ``test_distributed_cli.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from torchmaml import MetaLearner
from torchmaml.bayesian import SVGD, GaussianLikelihood, Particles
from torchmaml.data import SinusoidTasks
from torchmaml.distributed import gather_tasks, shard, task_mean, task_range
from torchmaml.errors import ConfigError
from torchmaml.estimators import ESTIMATORS
from torchmaml.tasks import TaskBatch
from torchmaml.theory.step_size import TheoryStepSize

TASKS = 5  # does not divide by the 2 processes
CASES = [(name, "fixed") for name in ESTIMATORS] + [("unrolled", "meta_sgd"), ("unrolled", "per_layer_per_step")]


def _batch() -> TaskBatch:
    batch = SinusoidTasks(4, 6, dtype=torch.float64).sample(TASKS, torch.Generator().manual_seed(3))
    hessian = SinusoidTasks(5, 5, dtype=torch.float64).sample(TASKS, torch.Generator().manual_seed(4))
    return TaskBatch(
        batch.support_x, batch.support_y, batch.query_x, batch.query_y, hessian.support_x, hessian.support_y
    )


def _learner(estimator: str, rates: str, group=None) -> MetaLearner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    loss, update = F.mse_loss, None
    if estimator in ("chaser", "bfa"):  # Bayesian MAML's objectives: SVGD over an ensemble of 2 particles
        model = Particles(model, 2, GaussianLikelihood())
        loss, update = model.likelihood, SVGD()
    return MetaLearner(
        model, loss, inner_lr=0.05, inner_steps=2, estimator=estimator, inner_lr_mode=rates,
        compile=False, process_group=group, inner_update=update,
    )  # fmt: skip


def _grads(learner: MetaLearner) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in learner.named_parameters() if p.grad is not None}


def _worker(rank: int, store_path: str, out: str) -> None:
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {}
    for estimator, rates in CASES:
        learner = _learner(estimator, rates, dist.group.WORLD)
        metrics = learner.backward(shard(_batch()), loss_before=True)
        results[(estimator, rates)] = (_grads(learner), metrics)
    rule = TheoryStepSize(SinusoidTasks(dtype=torch.float64), TASKS, c=1 / 12, seed=5, process_group=dist.group.WORLD)
    learner = _learner("unrolled", "fixed")
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    results["theory"] = (rule.update(learner, optimizer), optimizer.param_groups[0]["lr"])
    values = torch.arange(10.0)[list(task_range(10, rank, 2))]
    results["gathered"] = gather_tasks(values, dist.group.WORLD)
    results["mean"] = task_mean({"x": torch.tensor([float(rank)])}, tasks=1 + 2 * rank, group=dist.group.WORLD)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
    os._exit(0)  # torch 2.13 can abort in the teardown of a process that used torch.func over gloo


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """The results of both ranks of one two-process group (computed once for the module)."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-9 * b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize(("estimator", "rates"), CASES)
def test_each_rank_gets_the_one_process_meta_gradient(two_ranks, estimator, rates):
    reference = _learner(estimator, rates)
    expected_metrics = reference.backward(_batch(), loss_before=True)
    expected = _grads(reference)
    for rank in (0, 1):
        grads, metrics = two_ranks[rank][(estimator, rates)]
        assert grads.keys() == expected.keys()
        for name in expected:
            assert _close(grads[name], expected[name]), (rank, name)
        for name in ("loss_after", "loss_before"):
            assert metrics[name] == pytest.approx(expected_metrics[name], rel=1e-12)
    # both ranks step with bit-identical gradients
    assert all(
        torch.equal(two_ranks[0][(estimator, rates)][0][n], two_ranks[1][(estimator, rates)][0][n]) for n in expected
    )


def test_theory_step_size_statistics_are_those_of_the_whole_batch(two_ranks):
    rule = TheoryStepSize(SinusoidTasks(dtype=torch.float64), TASKS, c=1 / 12, seed=5)
    learner = _learner("unrolled", "fixed")
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    expected = rule.update(learner, optimizer)
    for rank in (0, 1):
        values, lr = two_ranks[rank]["theory"]
        assert values.keys() == expected.keys()
        for name in expected:
            assert values[name] == pytest.approx(expected[name], rel=1e-9)
        assert lr == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)


def test_gathered_shares_are_the_whole_vector_and_means_are_task_weighted(two_ranks):
    for rank in (0, 1):
        assert torch.equal(two_ranks[rank]["gathered"], torch.arange(10.0))
        # rank 0 holds 1 task with mean 0, rank 1 holds 3 tasks with mean 1: (0 * 1 + 1 * 3) / 4
        assert two_ranks[rank]["mean"]["x"].item() == pytest.approx(0.75)


def test_task_ranges_cover_the_batch_in_order_with_shares_differing_by_at_most_one():
    for tasks in range(1, 12):
        for size in range(1, tasks + 1):
            ranges = [task_range(tasks, rank, size) for rank in range(size)]
            assert [i for r in ranges for i in r] == list(range(tasks))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


def test_fewer_tasks_than_processes_is_one_line_naming_the_fix():
    with pytest.raises(ConfigError, match="meta_batch_size: 2 tasks cannot be shared by 3 processes"):
        task_range(2, 0, 3)


def test_without_a_process_group_shard_is_the_whole_batch():
    batch = _batch()
    assert shard(batch) is batch
