"""Data parallel meta-RL: a share of the batch rolls out what the whole batch does, and two processes of a gloo
group on loopback take the one-process MAML-TRPO step.

The reference is one process with the whole batch. Shares are uneven (5 tasks over 2 processes). In float64
(a policy that computes in float64 on the float32 environment) the parameters after one ``meta_update`` and
after a short run agree within a relative 1e-9 and are bit-identical across the ranks (in the run, the
runtime compares the ranks' states at every checkpoint).

The command-line test (``torchrun ... -m torchmaml train``, marked ``e2e``) trains with ``policy_dtype =
"float64"``: the parameters agree within a relative 1e-9 and the evaluation's returns (float32 environment
data) within 1e-6. (In float32, TRPO's conjugate gradient amplifies the rounding of the Fisher-vector products'
sums, whose order depends on the shares, by up to the condition number of ``F + damping I``: with the default
``cg_damping = 1e-5`` one- and two-process runs drift apart by percents within a few steps.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchmaml.checkpoint import load_checkpoint
from torchmaml.distributed import task_range
from torchmaml.functional import FunctionalModel
from torchmaml.rl import load_config, train
from torchmaml.rl.maml_trpo import meta_update, sample_phases
from torchmaml.rl.navigation import Navigation2DEnv
from torchmaml.rl.policy import GaussianMLPPolicy
from torchmaml.rl.sampler import BatchedNavigationSampler, VectorEnvSampler, per_task
from torchmaml.run.team import Team

TASKS = 5  # does not divide by the 2 processes
CASES = [("exact", "exact"), ("plain", "post_adaptation"), ("dice", "exact")]  # (estimator, fisher)
SETTINGS = [
    f"meta_batch_size={TASKS}",
    "trajectories=4",
    "horizon=12",
    "hidden=[8]",
    "cg_iterations=5",
    "fisher_subsample=1",
]
RUN = [*SETTINGS, "iterations=3", "pretrained_iterations=2", "checkpoint_every=1", "eval_tasks=4", "eval_steps=1"]


def float64_policy() -> GaussianMLPPolicy:
    """The Gaussian MLP policy computing in float64 (the environments' observations are float32)."""
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 2, hidden=(8,), dtype=torch.float64)


def _phases(estimator: str, fisher: str, share: range | None = None):
    """The policy, configuration and phases of one meta-batch (``share`` of it), sampled in float64."""
    config = load_config("navigation2d", [*SETTINGS, f"estimator={estimator}", f"fisher={fisher}"])
    policy = FunctionalModel(float64_policy())
    sampler = BatchedNavigationSampler(config.horizon)
    generator = torch.Generator().manual_seed(7)
    tasks = sampler.sample_tasks(TASKS, generator)
    phases = sample_phases(sampler, policy, policy.parameters(), tasks, generator, config, [0.1], share)
    return policy, config, phases


def _update(estimator: str, fisher: str, share: range | None = None, group=None):
    policy, config, phases = _phases(estimator, fisher, share)
    reduce = {} if group is None else {"process_group": group}
    return meta_update(policy, policy.parameters(), phases, config, [0.1], estimator, **reduce)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-9) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max().clamp_min(1e-12))


def _worker(rank: int, store_path: str, out: str) -> None:
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    torch.set_num_threads(1)
    share = task_range(TASKS, rank, 2)
    results = {case: _update(*case, share, dist.group.WORLD) for case in CASES}
    team = Team(rank=rank, size=2, group=dist.group.WORLD)
    train(load_config("navigation2d", RUN), Path(out) / "run", progress=False, policy=float64_policy(), team=team)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
    os._exit(0)  # torch 2.13 can abort in the teardown of a process that used torch.func over gloo


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    """Both ranks' ``meta_update`` results and the run folder they trained together (computed once)."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)], folder / "run"


def test_a_share_rolls_out_the_whole_batch_s_tasks_and_uses_the_generator_as_it():
    whole = _phases("exact", "exact")[2]
    for share in (range(0, 3), range(3, 5)):
        part = _phases("exact", "exact", share)[2]
        for p, w in zip(part, whole, strict=True):
            tensors = [*p.episodes, p.advantages, p.log_probs, p.scale]
            expected = [*w.episodes, w.advantages, w.log_probs, w.scale]
            for x, y in zip(tensors, expected, strict=True):
                assert torch.equal(x, y[share.start : share.stop])


@pytest.mark.parametrize("tasks_per_round", [1, 2])
def test_the_gymnasium_sampler_rolls_out_a_share_as_the_whole_batch(tasks_per_round):
    torch.manual_seed(0)
    policy = FunctionalModel(GaussianMLPPolicy(2, 2, hidden=(8,)))
    tasks = torch.tensor([[0.2, -0.1], [-0.4, 0.3], [0.1, 0.2], [0.3, -0.3], [-0.2, -0.2]])
    # every task its own parameters, as after adaptation
    params = {
        n: p + 0.1 * torch.arange(5.0).view(-1, *[1] * (p.dim() - 1))
        for n, p in per_task(policy.parameters(), 5).items()
    }
    with VectorEnvSampler(Navigation2DEnv, 2, tasks_per_round, env_kwargs={"horizon": 6}) as sampler:
        generators = [torch.Generator().manual_seed(4) for _ in "ab"]
        whole = sampler.rollout(policy, params, tasks, 2, generators[0])
        part = sampler.rollout(
            policy, {n: p[2:5] for n, p in params.items()}, tasks, 2, generators[1], share=range(2, 5)
        )
    for x, y in zip(part, whole, strict=True):
        assert torch.equal(x, y[2:5])
    assert torch.equal(generators[0].get_state(), generators[1].get_state())


@pytest.mark.parametrize(("estimator", "fisher"), CASES)
def test_each_rank_takes_the_one_process_trpo_step(two_ranks, estimator, fisher):
    expected_params, expected_metrics = _update(estimator, fisher)
    ranks = [results[(estimator, fisher)] for results in two_ranks[0]]
    for params, metrics in ranks:
        assert params.keys() == expected_params.keys()
        for name in expected_params:
            assert _close(params[name], expected_params[name]), name
        assert metrics.keys() == expected_metrics.keys()
        for name in ("improvement", "kl", "gradient_norm"):
            assert metrics[name] == pytest.approx(expected_metrics[name], rel=1e-9), name
        for name in ("return_before", "return_after"):  # the environment's float32 rewards, averaged in float32
            assert metrics[name] == pytest.approx(expected_metrics[name], rel=1e-6), name
        for name in ("backtracks", "accepted"):
            assert metrics[name] == expected_metrics[name]
    assert expected_metrics["accepted"] == 1.0
    # both ranks hold bit-identical parameters and metrics
    assert all(torch.equal(ranks[0][0][name], ranks[1][0][name]) for name in expected_params)
    assert ranks[0][1] == ranks[1][1]


def test_two_ranks_train_the_one_process_run(two_ranks, tmp_path):
    together = two_ranks[1]
    alone = train(load_config("navigation2d", RUN), tmp_path / "run", progress=False, policy=float64_policy())
    for kind in ("maml", "pretrained"):
        first, second = (load_checkpoint(run / f"checkpoint-{kind}.pt") for run in (together, alone))
        for name, value in second["policy"].items():
            assert _close(first["policy"][name], value), (kind, name)
        assert torch.equal(first["generator"], second["generator"])
        assert first["env_steps"] == second["env_steps"]
        lines = [json.loads(line) for line in (together / f"metrics-{kind}.jsonl").read_text().splitlines()]
        reference = [json.loads(line) for line in (alone / f"metrics-{kind}.jsonl").read_text().splitlines()]
        assert [line["env_steps"] for line in lines] == [line["env_steps"] for line in reference]
        for line, expected in zip(lines, reference, strict=True):
            assert line["return_after"] == pytest.approx(expected["return_after"], rel=1e-6)
            assert line["kl"] == pytest.approx(expected["kl"], rel=1e-9)


BIN = Path(sys.executable).parent
TORCHRUN = [BIN / "torchrun", "--standalone", "--nproc-per-node=2", "-m", "torchmaml"]
CLI_SETTINGS = [*SETTINGS, "iterations=2", "pretrained_iterations=0", "policy_dtype=float64", "eval_tasks=4"]
CLI_SETTINGS += ["eval_steps=1"]
CLI_RUN = ["--config", "navigation2d", "--no-progress", *(arg for s in CLI_SETTINGS for arg in ("--set", s))]


def _command(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*map(str, args)], env=env, capture_output=True, text=True, timeout=240)


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for key in sorted(tree) for x in _numbers(tree[key])]
    if isinstance(tree, list):
        return [x for item in tree for x in _numbers(item)]
    return [tree] if isinstance(tree, float) else []


@pytest.mark.e2e
def test_torchrun_trains_and_evaluates_what_one_process_does(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    alone = _command(BIN / "torchmaml", "train", *CLI_RUN, "--out", one)
    assert alone.returncode == 0, alone.stderr
    together = _command(*TORCHRUN, "train", *CLI_RUN, "--out", two)
    assert together.returncode == 0, together.stderr
    assert together.stdout.count("run folder:") == 1  # rank 0 alone reports and writes
    assert len((two / "metrics-maml.jsonl").read_text().splitlines()) == 2
    first, second = (load_checkpoint(run / "checkpoint-maml.pt") for run in (two, one))
    for name, value in second["policy"].items():
        assert value.dtype == torch.float64
        assert _close(first["policy"][name], value, rel=1e-9), name
    assert first["env_steps"] == second["env_steps"]
    for run in (one, two):
        evaluated = _command(BIN / "torchmaml", "evaluate", run)
        assert evaluated.returncode == 0, evaluated.stderr
    results = [json.loads((run / "evaluation.json").read_text())["results"] for run in (two, one)]
    assert len(results[0]) == len(results[1]) > 0
    for x, y in zip(_numbers(results[0]), _numbers(results[1]), strict=True):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-9)
