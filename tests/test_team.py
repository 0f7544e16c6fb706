"""``torchmaml.run.team.Team``: the decisions the processes of one run take together, in a real two-process
gloo group. Each rank records what every call returned or raised; the assertions read both records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchmaml.errors import TorchMAMLError
from torchmaml.run.team import SOLO, ReportedByWriter, Team, digest


def _outcome(call) -> tuple[str, object]:
    try:
        return "returned", call()
    except TorchMAMLError as error:
        return type(error).__name__, str(error)


def _bad_config() -> None:
    raise TorchMAMLError("data_dir: no such folder")


def _worker(rank: int, store_path: str, out: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    team = Team(rank=rank, size=2, group=dist.group.WORLD)
    record = {
        "any": _outcome(lambda: team.any(rank == 1, False)),
        "broadcast": _outcome(lambda: team.broadcast({"resume at": 50} if rank == 0 else None)),
        "agree, rank 1 fails": _outcome(lambda: team.agree(lambda: _bad_config() if rank == 1 else "ok")),
        "agree, both fail": _outcome(lambda: team.agree(_bad_config)),
        "agree, none fails": _outcome(lambda: team.agree(lambda: rank)),
        "same, equal": _outcome(lambda: team.same({"w": torch.ones(3)}, "iteration 10")),
        "same, different": _outcome(lambda: team.same({"w": torch.ones(3) * (1 + rank)}, "iteration 20")),
    }
    torch.save(record, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
    os._exit(0)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("team")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def test_a_flag_set_on_one_rank_is_set_on_every_rank(records):
    assert records[0]["any"] == records[1]["any"] == ("returned", (True, False))


def test_every_rank_receives_rank_zeros_value(records):
    assert records[1]["broadcast"] == ("returned", {"resume at": 50})


def test_an_error_on_one_rank_stops_every_rank_and_is_reported_once_by_rank_zero(records):
    assert records[0]["agree, rank 1 fails"] == ("TorchMAMLError", "rank 1: data_dir: no such folder")
    assert records[1]["agree, rank 1 fails"][0] == ReportedByWriter.__name__  # silent: the CLI prints nothing
    assert records[0]["agree, both fail"] == ("TorchMAMLError", "data_dir: no such folder")
    assert records[1]["agree, both fail"][0] == ReportedByWriter.__name__
    assert [r["agree, none fails"] for r in records] == [("returned", 0), ("returned", 1)]


def test_differing_states_stop_the_run_on_every_rank(records):
    assert records[0]["same, equal"] == records[1]["same, equal"] == ("returned", None)
    for record in records:
        kind, message = record["same, different"]
        assert kind == "TorchMAMLError"
        assert message.startswith("iteration 20: the training state of rank(s) [1] differs from rank 0's")


def test_one_process_decides_alone():
    assert SOLO.any(True, False) == (True, False)
    assert SOLO.broadcast(3) == 3
    assert SOLO.agree(lambda: 4) == 4
    SOLO.same({"w": torch.ones(2)}, "anything")  # nothing to compare with


def test_the_digest_covers_every_tensor_and_ignores_plain_numbers():
    state = {"w": torch.ones(3), "step": torch.tensor(5), "cpu_seconds": 1.5}
    assert digest(state) == digest({**state, "cpu_seconds": 9.0})
    assert digest(state) != digest({**state, "step": torch.tensor(6)})
    assert digest(state) != digest({**state, "w": torch.ones(3).double()})
