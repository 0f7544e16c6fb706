"""``torchmaml evaluate RUN_DIR``: load a trained run, meta-test it, write ``evaluation.json`` and the figure."""

from __future__ import annotations

import json
from pathlib import Path

from torchmaml.checkpoint import atomic_write_bytes, load_checkpoint
from torchmaml.config import TrainConfig
from torchmaml.evaluate import AdaptationResult, evaluate_adaptation, format_table, tune_fine_tuning_lr
from torchmaml.experiment import MAML, PRETRAINED, build_learner, evaluation_batches
from torchmaml.learner import MetaLearner
from torchmaml.plots import plot_sinusoid_fits
from torchmaml.rundir import RunDir

SCHEMA_VERSION = 1


def load_learner(run: RunDir, config: TrainConfig, kind: str) -> MetaLearner:
    """The learner of ``kind`` with its trained weights from the run folder."""
    learner = build_learner(config, kind)
    learner.load_state_dict(load_checkpoint(run.checkpoint(kind))["learner"])
    return learner


def evaluate_run(root: Path, eval_tasks: int | None = None) -> dict:
    """Meta-test the run's MAML model (and the pretrained baseline, if trained) on held-out tasks.

    Returns the report written to ``RUN_DIR/evaluation.json`` (schema in the README).
    """
    run = RunDir(Path(root))
    config = run.load_config()
    if eval_tasks is not None:
        config = config.model_copy(update={"eval_tasks": eval_tasks})
    batches = evaluation_batches(config, "test")
    learners: dict[str, tuple[MetaLearner, float | None]] = {MAML: (load_learner(run, config, MAML), None)}
    if run.checkpoint(PRETRAINED).exists():
        pretrained = load_learner(run, config, PRETRAINED)
        validation = evaluation_batches(config, "validation")
        k = min(config.eval_support_sizes)
        rate = tune_fine_tuning_lr(pretrained, validation[k], config.eval_steps, config.baseline_lr_grid)
        learners[PRETRAINED] = (pretrained, rate)
    results: list[AdaptationResult] = []
    for name, (learner, rate) in learners.items():
        for batch in batches.values():
            results += evaluate_adaptation(learner, batch, config.eval_steps, name, inner_lr=rate)
    report = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": config.benchmark,
        "metric": "mse",
        "eval_tasks": config.eval_tasks,
        "eval_query_size": config.eval_query_size,
        "confidence": 0.95,
        "inner_lr": {name: rate if rate is not None else config.inner_lr for name, (_, rate) in learners.items()},
        "results": [r.to_dict() for r in results],
        "table": format_table(results, "MSE"),
    }
    atomic_write_bytes(run.evaluation, (json.dumps(report, indent=2) + "\n").encode())
    plot_sinusoid_fits(learners, run.fits, support_size=min(config.eval_support_sizes))
    return report
