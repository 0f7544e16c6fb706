"""The command line as a user runs it: a short training run writes every promised file; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchmaml.checkpoint import load_checkpoint

SHORT = [
    "--set",
    "iterations=30",
    "--set",
    "pretrained_iterations=20",
    "--set",
    "eval_tasks=20",
    "--set",
    "log_every=10",
    "--no-progress",
]


def torchmaml(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "torchmaml.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = torchmaml("train", "--config", "sinusoid-demo", *SHORT, "--out", str(run))
    assert result.returncode == 0, result.stderr
    return run, result


def test_train_writes_every_promised_file(trained_run):
    run, result = trained_run
    assert f"run folder: {run}" in result.stdout
    for name in (
        "config.toml",
        "metrics-maml.jsonl",
        "metrics-pretrained.jsonl",
        "checkpoint-maml.pt",
        "checkpoint-pretrained.pt",
        "learning_curve.png",
    ):
        assert (run / name).stat().st_size > 0, name
    assert list((run / "tensorboard" / "maml").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics-maml.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 31))
    assert {"loss_after", "seconds"} <= set(rows[0])
    logged = [r["iteration"] for r in rows if "loss_before" in r]  # on the logging iterations only
    assert logged and all(i % 10 == 0 or i == 30 for i in logged)
    assert load_checkpoint(run / "checkpoint-maml.pt")["iteration"] == 30
    assert "iterations = 30" in (run / "config.toml").read_text()


def test_evaluate_prints_and_writes_the_table(trained_run):
    run, _ = trained_run
    result = torchmaml("evaluate", str(run))
    assert result.returncode == 0, result.stderr
    assert "Meta-test on 20 held-out tasks" in result.stdout
    assert "MSE, 10 steps" in result.stdout and "pretrained" in result.stdout
    report = json.loads((run / "evaluation.json").read_text())
    assert report["schema_version"] == 2 and report["eval_tasks"] == 20
    cells = {(r["model"], r["support_size"], r["steps"]) for r in report["results"]}
    assert cells == {(m, k, s) for m in ("maml", "pretrained") for k in (5, 10) for s in (1, 5, 10)}
    assert all(r["ci95"] > 0 for r in report["results"])
    assert (run / "adaptation.png").stat().st_size > 0


def test_an_implicit_run_is_also_scored_after_its_own_proximal_solve(tmp_path):
    run = tmp_path / "imaml"
    settings = ["estimator=implicit", "iterations=3", "pretrained_baseline=false", "eval_tasks=8", "eval_steps=[0,2]"]
    sets = [part for setting in settings for part in ("--set", setting)]
    result = torchmaml("train", "--config", "sinusoid-demo", *sets, "--no-progress", "--out", str(run))
    assert result.returncode == 0, result.stderr
    result = torchmaml("evaluate", str(run))
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "evaluation.json").read_text())
    scores = {(r["model"], r["support_size"], r["steps"]): r["mean"] for r in report["results"]}
    assert set(scores) == {(m, k, s) for m in ("maml", "maml (proximal)") for k in (5, 10) for s in (0, 2)}
    for k in (5, 10):  # no step is the same model either way; two steps of each adaptation differ
        assert scores[("maml", k, 0)] == pytest.approx(scores[("maml (proximal)", k, 0)], rel=1e-6)
        assert scores[("maml", k, 2)] != pytest.approx(scores[("maml (proximal)", k, 2)], rel=1e-3)
    assert "maml (proximal)" in result.stdout


def test_an_implicit_run_validates_after_its_own_proximal_solve(tmp_path):
    """The best-on-validation weights of an iMAML run are picked by the adaptation they are trained for: the
    validation score is the proximal solve's, not that of plain gradient steps."""
    import torch

    from torchmaml import load_run
    from torchmaml.benchmark import benchmark_of
    from torchmaml.experiment import metric_of

    run = tmp_path / "imaml"
    settings = ["estimator=implicit", "iterations=3", "pretrained_baseline=false", "validate_every=3", "val_tasks=8"]
    settings += ["eval_tasks=8", "eval_steps=[2]"]
    sets = [part for setting in settings for part in ("--set", setting)]
    result = torchmaml("train", "--config", "sinusoid-demo", *sets, "--no-progress", "--out", str(run))
    assert result.returncode == 0, result.stderr
    last = json.loads((run / "metrics-maml.jsonl").read_text().splitlines()[-1])
    (validated,) = [value for key, value in last.items() if key.startswith("val_")]
    learner, config = load_run(run)  # the weights validated at iteration 3, the last
    chunks = next(iter(benchmark_of(config).evaluation_batches(config, "validation", None).values()))
    metric = metric_of(config).fn
    proximal = torch.cat([learner.own_adaptation_metric(batch, [2], metric) for batch in chunks]).mean()
    gradient_steps = torch.cat([learner.query_metric(batch, 2, metric) for batch in chunks])[:, 2].mean()
    assert validated == pytest.approx(float(proximal), rel=1e-5)
    assert validated != pytest.approx(float(gradient_steps), rel=1e-3)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "inner_lr=-1"], "inner_lr: Input should be greater than 0"),
        (["--set", "bogus=1"], "bogus: unknown key"),
        (["--set", "meta_batch_size=many"], "meta_batch_size: Input should be a valid integer"),
    ],
)
def test_bad_config_is_one_line_and_exit_code_2(tmp_path, args, message):
    result = torchmaml("train", "--config", "sinusoid", *args, "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("torchmaml: error: ") and message in result.stderr
    assert not (tmp_path / "r").exists()


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path):
    result = torchmaml("evaluate", str(tmp_path))
    assert result.returncode == 2
    assert "is not a run folder" in result.stderr and result.stderr.strip().count("\n") == 0


def test_rl_presets_train_evaluate_and_resume_through_the_same_commands(tmp_path):
    run = tmp_path / "nav"
    tiny = ["--set", "iterations=2", "--set", "meta_batch_size=2", "--set", "trajectories=2",
            "--set", "pretrained_iterations=0", "--set", "eval_tasks=2", "--no-progress"]  # fmt: skip
    result = torchmaml("train", "--config", "navigation2d", *tiny, "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert (run / "checkpoint-maml.pt").exists() and (run / "metrics-maml.jsonl").exists()
    result = torchmaml("evaluate", str(run))
    assert result.returncode == 0, result.stderr
    assert "maml" in result.stdout and (run / "evaluation.json").exists()
    assert torchmaml("train", "--resume", str(run), "--no-progress").returncode == 0
    bad = torchmaml("train", "--config", "navigation2d", "--set", "max_kl=0", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "max_kl" in bad.stderr and bad.stderr.count("\n") == 1


def test_unknown_preset_lists_supervised_and_rl_presets(tmp_path):
    result = torchmaml("train", "--config", "navigaton2d", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "sinusoid" in result.stderr and "navigation2d" in result.stderr
