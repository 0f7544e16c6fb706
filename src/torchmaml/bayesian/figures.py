"""Figures of Bayesian MAML's uncertainty: the reliability diagram and the sinusoid's posterior predictive.

The reliability diagram draws, per equal-width confidence bin ``b`` of pooled ``calibration_bins`` sums, the
accuracy ``correct_b / count_b`` against the bin's confidence range, the diagonal ``accuracy = confidence``
of a calibrated model, and the ECE ``sum_b |correct_b - confidence_b| / sum_b count_b`` in the legend. The
posterior predictive draws, per task, the true function, the support points, the mixture's mean and its
central 90% band.

matplotlib is optional (``pip install "torchmaml[plots]"``): without it each function prints a one-line note
and returns ``None``, as ``torchmaml.plots`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchmaml.bayesian.uncertainty import expected_calibration_error


def _plots() -> Any:
    """``torchmaml.plots``, imported when a figure is drawn (it imports the learner, which may one day import
    this package: a module-level import would be circular)."""
    from torchmaml import plots

    return plots


def _array(values: Tensor | Any) -> np.ndarray:
    """A float64 NumPy copy of a tensor (on any device, with or without a graph) or of a sequence."""
    return torch.as_tensor(values).detach().to("cpu", torch.float64).numpy().reshape(-1)


def plot_reliability_diagram(stats: dict[str, Tensor], path: Path) -> Path | None:
    """One panel per model name: its accuracy per confidence bin (bars over the bin's range; empty bins are
    left out), the mean confidence per bin (dots), the diagonal, and the ECE in the legend. ``stats`` maps a
    name to pooled ``calibration_bins`` sums ``[3, bins]``. Returns the file written, or ``None`` without
    matplotlib."""
    if not stats:
        raise ValueError("plot_reliability_diagram needs the calibration_bins sums of at least one model")
    plots = _plots()
    if not plots._has_matplotlib():
        return None
    from torchmaml.run.files import save_figure

    fig = plots.new_figure(figsize=(4 * len(stats), 4))
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    for ax, (name, sums) in zip(axes, stats.items(), strict=True):
        count, confidence, correct = (_array(row) for row in torch.as_tensor(sums))
        bins = count.shape[0]
        left = np.arange(bins) / bins
        filled = count > 0
        ece = float(expected_calibration_error(torch.as_tensor(sums, dtype=torch.float64)))
        accuracy = correct[filled] / count[filled]
        ax.bar(
            left[filled],
            accuracy,
            width=1 / bins,
            align="edge",
            edgecolor="black",
            alpha=0.7,
            label=f"accuracy (ECE {ece:.3f})",
        )
        ax.plot(
            confidence[filled] / count[filled],
            accuracy,
            "o",
            color="tab:red",
            ms=4,
            label="(mean confidence, accuracy)",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name} ({int(count.sum())} predictions)")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=120)
    return Path(path)


PANEL_KEYS = ("x_grid", "true_y", "support_x", "support_y", "mean", "lower", "upper")


def plot_posterior_predictive(panels: list[dict], path: Path) -> Path | None:
    """The sinusoid's posterior predictive, one panel per task in one row: the true function ``true_y`` on
    ``x_grid [G]``, the ``K`` support points, the mixture's ``mean [G]`` and its ``lower``/``upper`` 90% band;
    each panel dict also holds its ``title``. Returns the file written, or ``None`` without matplotlib."""
    if not panels:
        raise ValueError("plot_posterior_predictive needs at least one panel")
    for number, panel in enumerate(panels):
        missing = [key for key in PANEL_KEYS if key not in panel]
        if missing:
            raise ValueError(f"panel {number} of plot_posterior_predictive lacks {', '.join(missing)}")
    plots = _plots()
    if not plots._has_matplotlib():
        return None
    from torchmaml.run.files import save_figure

    fig = plots.new_figure(figsize=(4.5 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        x = _array(panel["x_grid"])
        ax.fill_between(
            x, _array(panel["lower"]), _array(panel["upper"]), color="tab:blue", alpha=0.25, label="90% interval"
        )
        ax.plot(x, _array(panel["true_y"]), "k--", lw=1.5, label="true function")
        ax.plot(x, _array(panel["mean"]), color="tab:blue", lw=2, label="predictive mean")
        ax.plot(
            _array(panel["support_x"]), _array(panel["support_y"]), "^", color="tab:red", ms=8, label="support points"
        )
        ax.set_title(str(panel.get("title", "")))
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("y")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=120)
    return Path(path)
