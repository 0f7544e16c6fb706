"""``torchmaml evaluate RUN_DIR``: load a trained run, meta-test it, write ``evaluation.json`` (and figures)."""

from __future__ import annotations

import json
from pathlib import Path

from torchmaml.checkpoint import atomic_write_bytes, load_checkpoint, load_module_state
from torchmaml.config import TrainConfig
from torchmaml.evaluate import AdaptationResult, evaluate_adaptation, format_table, tune_fine_tuning_lr
from torchmaml.experiment import (
    MAML,
    PRETRAINED,
    build_learner,
    evaluation_batches,
    is_classification,
    metric_of,
    split_summary,
)
from torchmaml.learner import MetaLearner
from torchmaml.plots import plot_sinusoid_fits
from torchmaml.run.files import WriteError
from torchmaml.rundir import RunDir

SCHEMA_VERSION = 2


def load_learner(run: RunDir, config: TrainConfig, kind: str) -> tuple[MetaLearner, Path]:
    """The learner of ``kind`` with its trained weights: the best-on-validation checkpoint if the run kept
    one, else the final one. Returns the learner and the checkpoint it came from."""
    path = run.best_checkpoint(kind) if run.best_checkpoint(kind).exists() else run.checkpoint(kind)
    learner = build_learner(config, kind)
    load_module_state(learner, load_checkpoint(path).get("learner"), path)
    return learner, path


def evaluate_run(root: Path, eval_tasks: int | None = None) -> dict:
    """Meta-test the run's MAML model (and the pretrained baseline, if trained) on held-out tasks.

    Returns the report written to ``RUN_DIR/evaluation.json`` (schema in the README).
    """
    run = RunDir(Path(root))
    config = run.config_for_this_machine()
    if eval_tasks is not None:
        config = config.model_copy(update={"eval_tasks": eval_tasks})
    metric = metric_of(config)
    batches = evaluation_batches(config, "test")
    maml, source = load_learner(run, config, MAML)
    learners: dict[str, tuple[MetaLearner, float | None]] = {MAML: (maml, None)}
    checkpoints = {MAML: source.name}
    if run.checkpoint(PRETRAINED).exists():
        pretrained, source = load_learner(run, config, PRETRAINED)
        checkpoints[PRETRAINED] = source.name
        validation = evaluation_batches(config, "validation")[min(config.eval_support_sizes)]
        rate = tune_fine_tuning_lr(pretrained, validation, config.eval_steps, config.baseline_lr_grid, metric.fn)
        learners[PRETRAINED] = (pretrained, rate)
    results: list[AdaptationResult] = []
    for name, (learner, rate) in learners.items():
        for chunks in batches.values():
            results += evaluate_adaptation(learner, chunks, config.eval_steps, name, metric.fn, inner_lr=rate)
    scale, label = (100.0, "accuracy %") if is_classification(config) else (1.0, "MSE")
    report = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": config.benchmark,
        "metric": metric.name,
        "eval_tasks": config.eval_tasks,
        "eval_query_size": config.queries * config.ways if is_classification(config) else config.eval_query_size,
        "confidence": 0.95,
        "checkpoints": checkpoints,
        "inner_lr": {name: rate if rate is not None else config.inner_lr for name, (_, rate) in learners.items()},
        "results": [r.to_dict() for r in results],
        "table": format_table(results, label, scale),
    }
    if is_classification(config):
        report.update({"ways": config.ways, "shots": config.shots, **split_summary(config)})
        counts = report["classes"]
        report["held_out"] = (
            f"{config.eval_tasks} tasks drawn from the {counts['test']} test classes of split {report['split']!r} "
            f"(train {counts['train']}, validation {counts['val']}, test {counts['test']} classes, disjoint)"
        )
    report["written"] = []
    try:  # a read-only run folder: the table is still worth printing
        atomic_write_bytes(run.evaluation, (json.dumps(report, indent=2) + "\n").encode())
        report["written"].append(str(run.evaluation))
        if not is_classification(config):
            figure = plot_sinusoid_fits(learners, run.fits, support_size=min(config.eval_support_sizes))
            if figure is not None:
                report["written"].append(str(figure))
    except WriteError as error:
        report["not_written"] = str(error)
    return report
