"""The supervised learning-curve figure: a validation panel appears exactly when the run validated."""

from __future__ import annotations

import matplotlib.image

from torchmaml.plots import plot_learning_curve


def _rows(count: int, validate_every: int | None) -> list[dict]:
    rows = []
    for i in range(1, count + 1):
        row = {"iteration": i, "loss_before": 1.6, "loss_after": 1.0 / i, "seconds": 2.0 * i}
        if validate_every and i % validate_every == 0:
            row["val_accuracy"] = 0.5 + 0.4 * i / count
        rows.append(row)
    return rows


def test_learning_curve_adds_a_validation_panel_only_for_validated_runs(tmp_path):
    plain = plot_learning_curve({"maml": _rows(50, None)}, tmp_path / "plain.png")
    validated = plot_learning_curve({"maml": _rows(50, 10)}, tmp_path / "validated.png")
    plain_width = matplotlib.image.imread(plain).shape[1]
    validated_width = matplotlib.image.imread(validated).shape[1]
    assert validated_width == 2 * plain_width
