"""Bayesian MAML from the command line: train, resume and evaluate particle ensembles (regression and text
classification), and one-line refusals of bad options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_text_cli import write_texts

from torchmaml.checkpoint import load_checkpoint

SINUSOID = [
    "--config", "sinusoid", "--no-progress", "--set", "pretrained_baseline=false", "--set", "compile=false",
    "--set", "particles=3", "--set", "inner_update=svgd", "--set", "estimator=chaser", "--set", "inner_lr=0.003",
    "--set", "meta_batch_size=4", "--set", "eval_tasks=20", "--set", "eval_steps=[1,2]",
    "--set", "frequency_range=[0.5,2.0]", "--set", "noise_fraction=0.01", "--set", "checkpoint_every=10",
    "--set", "train_tasks=12",
]  # fmt: skip


def torchmaml(*args):
    return subprocess.run([sys.executable, "-m", "torchmaml", *args], capture_output=True, text=True, timeout=300)


def weights(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint-maml.pt")["learner"]


@pytest.mark.e2e
def test_sinusoid_ensemble_trains_resumes_and_reports_its_uncertainty(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert torchmaml("train", *SINUSOID, "--set", "iterations=30", "--out", str(straight)).returncode == 0
    first = torchmaml("train", *SINUSOID, "--set", "iterations=15", "--out", str(resumed))
    assert first.returncode == 0, first.stderr
    second = torchmaml("train", "--resume", str(resumed), "--set", "iterations=30", "--no-progress")
    assert second.returncode == 0, second.stderr
    for name, tensor in weights(straight).items():
        assert torch.equal(tensor, weights(resumed)[name]), name
    assert weights(straight)["model.members.0.weight"].shape[0] == 3

    evaluation = torchmaml("evaluate", str(straight))
    assert evaluation.returncode == 0, evaluation.stderr
    assert "90% coverage" in evaluation.stdout and "predictive NLL" in evaluation.stdout
    report = json.loads((straight / "evaluation.json").read_text())
    rows = report["uncertainty"]
    assert {(r["support_size"], r["steps"]) for r in rows} == {(5, 1), (5, 2), (10, 1), (10, 2)}
    for row in rows:
        assert 0.0 <= row["coverage"]["mean"] <= 1.0 and row["nll"]["ci95"] > 0
    assert (straight / "posterior_predictive.png").stat().st_size > 10_000
    metrics = [json.loads(line) for line in (straight / "metrics-maml.jsonl").read_text().splitlines()]
    assert all("chaser_distance" in m for m in metrics)


@pytest.mark.e2e
def test_text_ensemble_reports_calibration(tmp_path):
    write_texts(tmp_path / "texts", range(8), 12, seed=0)
    run = tmp_path / "run"
    result = torchmaml(
        "train", "--config", "text-5w5s-gru", "--no-progress", "--out", str(run),
        "--set", "benchmark=text_folder", "--set", f"data_dir={tmp_path / 'texts'}",
        "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "ways=3", "--set", "shots=2", "--set", "queries=2",
        "--set", "iterations=6", "--set", "text_embedding=8", "--set", "text_hidden=8", "--set", "max_length=8",
        "--set", "meta_batch_size=2", "--set", "validate_every=0", "--set", "eval_tasks=8", "--set", "eval_steps=[1]",
        "--set", "particles=2", "--set", "inner_update=svgd", "--set", "estimator=bfa", "--set", "inner_lr=0.01",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluation = torchmaml("evaluate", str(run))
    assert evaluation.returncode == 0, evaluation.stderr
    assert "ECE (95% bootstrap)" in evaluation.stdout
    (row,) = json.loads((run / "evaluation.json").read_text())["uncertainty"]
    assert row["ece"]["low"] <= row["ece"]["high"] and 0.0 <= row["ece"]["value"] <= 1.0
    assert (run / "reliability.png").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["inner_update=svgd"], "inner_update 'svgd' moves a particle ensemble: set particles"),
        (["estimator=chaser"], "estimator 'chaser' meta-learns a particle ensemble: set particles"),
        (["particles=-1"], "particles"),
        (["particles=2", "inner_update=svgd", "estimator=implicit"], "assumes gradient inner steps"),
        (["particles=2", "pretrained_baseline=true"], "pretrained baseline is a single network"),
        (["frequency_range=[2.0,0.5]"], "frequency_range: [low, high] with low <= high"),
    ],
)
def test_bad_options_are_one_line(tmp_path, settings, message):
    arguments = ["train", "--config", "sinusoid", "--out", str(tmp_path / "run")]
    for setting in settings:
        arguments += ["--set", setting]
    result = torchmaml(*arguments)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()
