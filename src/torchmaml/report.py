"""``torchmaml evaluate RUN_DIR``: load a trained run, meta-test it, write ``evaluation.json`` (and figures)."""

from __future__ import annotations

import json
from pathlib import Path

from torchmaml.bayesian.evaluation import format_uncertainty_table, uncertainty_results
from torchmaml.bayesian.figures import plot_reliability_diagram
from torchmaml.benchmark import benchmark_of
from torchmaml.checkpoint import atomic_write_bytes, load_checkpoint, load_module_state
from torchmaml.config import TrainConfig
from torchmaml.evaluate import (
    AdaptationResult,
    evaluate_adaptation,
    evaluate_own_adaptation,
    format_table,
    tune_fine_tuning_lr,
)
from torchmaml.experiment import MAML, PRETRAINED, build_learner, likelihood_of, metric_of
from torchmaml.learner import MetaLearner
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
    benchmark = benchmark_of(config)
    metric = metric_of(config)
    batches = benchmark.evaluation_batches(config, "test", None)
    maml, source = load_learner(run, config, MAML)
    learners: dict[str, tuple[MetaLearner, float | None]] = {MAML: (maml, None)}
    checkpoints = {MAML: source.name}
    if run.checkpoint(PRETRAINED).exists():
        pretrained, source = load_learner(run, config, PRETRAINED)
        checkpoints[PRETRAINED] = source.name
        validation = benchmark.evaluation_batches(config, "validation", None)[min(config.eval_support_sizes)]
        rate = tune_fine_tuning_lr(pretrained, validation, config.eval_steps, config.pretrained_lr_grid, metric.fn)
        learners[PRETRAINED] = (pretrained, rate)
    results: list[AdaptationResult] = []
    for name, (learner, rate) in learners.items():
        for chunks in batches.values():
            results += evaluate_adaptation(learner, chunks, config.eval_steps, name, metric.fn, inner_lr=rate)
    own = getattr(maml.estimator, "own_adaptation", None)
    if own is not None:  # scored after the adaptation it was trained for too (iMAML: its solver's steps)
        for chunks in batches.values():
            results += evaluate_own_adaptation(maml, chunks, config.eval_steps, f"{MAML} ({own})", metric.fn)
    calibration: dict = {}
    scored = config.particles or benchmark.classification  # a classifier's softmax is a distribution too
    if scored:
        rows, calibration = uncertainty_results(maml, batches, config.eval_steps, likelihood_of(config), MAML)
    report = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": config.benchmark,
        "metric": metric.name,
        "eval_tasks": config.eval_tasks,
        "eval_query_size": benchmark.query_size(config),
        "confidence": 0.95,
        "checkpoints": checkpoints,
        "inner_lr": {name: rate if rate is not None else config.inner_lr for name, (_, rate) in learners.items()},
        "results": [r.to_dict() for r in results],
        "table": format_table(results, metric.label, metric.scale),
        **benchmark.held_out(config),
    }
    if scored:
        report.update(uncertainty=rows, uncertainty_table=format_uncertainty_table(rows))
    report["written"] = []
    try:  # a read-only run folder: the table is still worth printing
        atomic_write_bytes(run.evaluation, (json.dumps(report, indent=2) + "\n").encode())
        report["written"].append(str(run.evaluation))
        report["written"] += [str(path) for path in benchmark.figures(learners, run, config)]
        if calibration and plot_reliability_diagram(calibration, run.reliability) is not None:
            report["written"].append(str(run.reliability))
    except WriteError as error:
        report["not_written"] = str(error)
    return report
