"""The supervised species' commands (``torchmaml.species``): what ``torchmaml train`` and ``torchmaml evaluate``
do for sinusoid regression and few-shot classification. Imported on first use, as every species' module."""

from __future__ import annotations

from pathlib import Path

from torchmaml.config import TrainConfig, load_config
from torchmaml.run.team import SOLO, Team
from torchmaml.rundir import resume_config
from torchmaml.species import Evaluation


def train(config: TrainConfig, out: Path, *, progress: bool, resume: bool, overwrite: bool, team: Team = SOLO) -> Path:
    """``torchmaml.train.train_run``; the run folder."""
    from torchmaml.train import train_run

    return train_run(config, out, progress=progress, resume=resume, overwrite=overwrite, team=team).root


def evaluate(run_dir: Path, *, tasks: int | None) -> Evaluation:
    """The meta-test of a run on ``tasks`` held-out tasks (unset: the config's): ``torchmaml.report``."""
    from torchmaml.report import evaluate_run

    report = evaluate_run(run_dir, eval_tasks=tasks)
    lines = [
        f"Meta-test on {report['eval_tasks']} held-out tasks, mean ± 95% CI (fine-tuning rates: {report['inner_lr']}):"
    ]
    if "held_out" in report:
        lines.append(f"held out: {report['held_out']}")
    lines.append(report["table"])
    if "uncertainty_table" in report:
        lines += ["Uncertainty of the predictive distribution:", report["uncertainty_table"]]
    return Evaluation(lines, written=report.get("written", []), not_written=report.get("not_written"))


__all__ = ["evaluate", "load_config", "resume_config", "train"]
