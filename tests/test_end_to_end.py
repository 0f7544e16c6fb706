"""End-to-end: a short sinusoid meta-training run must learn to adapt and beat the pretrained baseline.

The thresholds are set from measured runs (see the README's results section); they fail if learning breaks.
"""

from __future__ import annotations

import pytest

from torchmaml.config import load_config
from torchmaml.report import evaluate_run
from torchmaml.train import train_run


@pytest.mark.e2e
def test_short_sinusoid_run_beats_the_pretrained_baseline(tmp_path):
    config = load_config(
        "sinusoid-demo", ["iterations=2000", "pretrained_iterations=1000", "eval_tasks=200", "log_every=500"]
    )
    train_run(config, tmp_path, progress=False)
    report = evaluate_run(tmp_path)
    cell = {(r["model"], r["support_size"], r["steps"]): r["mean"] for r in report["results"]}
    print(report["table"])
    for k in (5, 10):
        assert cell["maml", k, 10] < 0.75 * cell["pretrained", k, 10]
        assert cell["maml", k, 10] < cell["maml", k, 1]
    assert cell["maml", 10, 10] < 1.5
