"""The species-agnostic runtime: ``Trainer(step, state, hooks)`` with a toy species (one tensor stepped by draws
from the global generator) checkpoints, resumes bit-identically, stops on a hook's reason and guards
against divergence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from torchmaml.run.hooks import DivergenceError, DivergenceGuard, Hook, TimeLimit
from torchmaml.run.signals import StopFlag
from torchmaml.run.trainer import Trainer
from torchmaml.rundir import RunDir


class ToyConfig(BaseModel):
    iterations: int = 10
    seed: int = 0


class Walk:
    """A random walk: the toy species' state, and its step."""

    def __init__(self, diverge_after: int | None = None) -> None:
        self.w = torch.zeros(3)
        self.diverge_after = diverge_after

    def state_dict(self) -> dict:
        return {"w": self.w.clone()}

    def load_state_dict(self, state: dict, path: Path) -> None:
        self.w = state["w"].clone()

    def step(self, iteration: int) -> dict[str, float]:
        delta = torch.rand(3)  # the global generator: a resume must restore it
        if self.diverge_after is not None and iteration > self.diverge_after:
            return {"loss": math.nan, "skipped": 1.0}
        self.w = self.w + delta
        return {"loss": float(self.w.sum()), "skipped": 0.0}


def trainer(root: Path, walk: Walk, hooks=(), iterations: int = 10) -> Trainer:
    root.mkdir(exist_ok=True)  # the run folder (``torchmaml.run.phases`` makes it)
    return Trainer(
        walk.step,
        walk,
        hooks,
        run=RunDir(root),
        kind="maml",
        iterations=iterations,
        config=ToyConfig(iterations=iterations),
        checkpoint_every=3,
        keep_checkpoints=2,
    )


def losses(root: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (root / "metrics-maml.jsonl").read_text().splitlines()]


def test_a_resumed_toy_run_repeats_the_uninterrupted_one(tmp_path, capsys):
    torch.manual_seed(0)
    whole = Walk()
    trainer(tmp_path / "whole", whole).run(StopFlag(), resume=False)
    torch.manual_seed(0)
    cut = tmp_path / "cut"
    trainer(cut, Walk(), iterations=7).run(StopFlag(), resume=False)  # killed after 7: drop the final checkpoint
    (cut / "checkpoint-maml.pt").unlink()
    with open(cut / "metrics-maml.jsonl", "a") as log:
        log.write('{"iteration": 8, "lo')  # a torn line
    torch.manual_seed(123)  # the process's generator is whatever it is; the checkpoint restores it
    resumed = Walk()
    trainer(cut, resumed).run(StopFlag(), resume=True)
    assert "resumed maml at iteration 6 from" in capsys.readouterr().out
    assert torch.equal(resumed.w, whole.w)
    assert losses(cut) == losses(tmp_path / "whole")


def test_a_hook_stops_the_phase_and_the_final_checkpoint_is_written(tmp_path, capsys):
    class StopAtFour(Hook):
        def stop_reason(self, trainer, metrics):
            return "enough" if trainer.iteration == 4 else None

    run = trainer(tmp_path, Walk(), [TimeLimit(None), StopAtFour()])
    run.run(StopFlag(), resume=False)
    assert run.iteration == 4 and (tmp_path / "checkpoint-maml.pt").exists()
    assert "maml: enough at iteration 4; stopping" in capsys.readouterr().out


def test_the_divergence_guard_names_the_last_good_checkpoint(tmp_path):
    walk = Walk(diverge_after=4)
    guard = DivergenceGuard(3, lambda: [walk.w], what="a non-finite loss", advice="Lower the step")
    with pytest.raises(DivergenceError, match=r"3 meta-steps in a row had a non-finite loss \(up to iteration 7\)"):
        trainer(tmp_path, walk, [guard]).run(StopFlag(), resume=False)
    assert guard.last_good == tmp_path / "checkpoints" / "maml-000000003.pt"


def test_non_finite_weights_stop_at_once(tmp_path):
    walk = Walk()
    walk.w = torch.tensor([0.0, math.inf, 0.0])
    guard = DivergenceGuard(3, lambda: [walk.w], what="a non-finite loss", advice="Lower the step")
    with pytest.raises(DivergenceError, match="iteration 1 left non-finite weights; last good checkpoint: none yet"):
        trainer(tmp_path, walk, [guard]).run(StopFlag(), resume=False)
