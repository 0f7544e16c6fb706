"""End-to-end: a short first-order meta-training run on the real Omniglot must learn to adapt.

Threshold set from measured runs (README, "Omniglot"): this configuration reached 63-69% after 3 steps;
chance is 20%, and before adaptation (labels permuted per task) a model stays near chance.
"""

from __future__ import annotations

import pytest
from conftest import OMNIGLOT_COPY

from torchmaml.config import load_config
from torchmaml.report import evaluate_run
from torchmaml.train import train_run


@pytest.mark.e2e
@pytest.mark.skipif(not OMNIGLOT_COPY.exists(), reason=f"no Omniglot copy at {OMNIGLOT_COPY}")
def test_short_omniglot_run_learns_to_adapt(tmp_path, omniglot_cache):
    config = load_config(
        "omniglot-5w1s",
        [f"data_dir={str(OMNIGLOT_COPY)!r}", f"cache_dir={str(omniglot_cache[1])!r}", "iterations=200",
         "meta_batch_size=8", "estimator=first_order", "strided=true", "eval_tasks=100", "eval_steps=[0, 3]",
         "validate_every=100", "val_tasks=50", "checkpoint_every=100"],
    )  # fmt: skip
    train_run(config, tmp_path / "run", progress=False)
    report = evaluate_run(tmp_path / "run")
    print(report["table"])
    accuracy = {r["steps"]: r["mean"] for r in report["results"]}
    assert accuracy[0] < 0.35
    assert accuracy[3] > 0.45
