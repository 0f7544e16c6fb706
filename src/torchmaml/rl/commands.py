"""The meta-RL species' commands (``torchmaml.species``): ``torchmaml train`` and ``torchmaml evaluate`` for
policies. Reading a configuration needs no extra; training and evaluating step environments, so they need
gymnasium (``pip install "torchmaml[rl]"``), named in one line when it is missing."""

from __future__ import annotations

from pathlib import Path

from torchmaml.extras import require
from torchmaml.rl.config import RLConfig, load_config
from torchmaml.run.team import SOLO, Team
from torchmaml.species import Evaluation


def resume_config(run_dir: Path, overrides: list[str]) -> RLConfig:
    """The run's saved configuration with ``--set`` overrides of the keys that extend it."""
    require("gymnasium", "rl")
    from torchmaml.rl.train import extended_config

    return extended_config(run_dir, overrides)


def train(config: RLConfig, out: Path, *, progress: bool, resume: bool, overwrite: bool, team: Team = SOLO) -> Path:
    """``torchmaml.rl.train.train``; the run folder."""
    require("gymnasium", "rl")
    from torchmaml.rl.train import train as train_policy

    return train_policy(config, out, progress=progress, resume=resume, overwrite=overwrite, team=team)


def evaluate(run_dir: Path, *, tasks: int | None) -> Evaluation:
    """The meta-test of a run (``torchmaml.rl.evaluate``; its tasks are the config's ``eval_tasks``)."""
    require("gymnasium", "rl")
    from torchmaml.rl.evaluate import evaluate as evaluate_policy

    report = evaluate_policy(run_dir)
    return Evaluation(
        [report["table"]], written=[str(Path(run_dir) / "evaluation.json")], not_written=report.get("not_written")
    )


__all__ = ["evaluate", "load_config", "resume_config", "train"]
