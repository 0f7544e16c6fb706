"""Figures of a run: the learning curve and the paper's Figure 2 (sinusoid fits before and after adaptation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.extras import available, note_missing
from torchmaml.learner import MetaLearner
from torchmaml.run.files import save_figure


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure(**kwargs)`` drawn on its own Agg canvas: no pyplot state, no ``matplotlib.use``, so
    the caller's backend (an interactive one in a notebook or GUI) is left as it was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _has_matplotlib() -> bool:
    """Whether matplotlib is installed; without it a one-line note names the extra."""
    if not available("matplotlib"):
        note_missing("plots")
        return False
    return True


def plot_learning_curve(records: dict[str, list[dict]], out: Path, window: int = 200) -> Path | None:
    """Query loss before and after adaptation against iteration (moving average over ``window``) and, when
    the run validated (``validate_every``), the validation metric against training wall-clock minutes.
    Returns the file written, or ``None`` without matplotlib (``pip install "torchmaml[plots]"``)."""
    if not _has_matplotlib():
        return None
    validated = {label: [r for r in rows if _validation_key(r)] for label, rows in records.items()}
    panels = 2 if any(validated.values()) else 1
    fig = new_figure(figsize=(7 * panels, 4))
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0][0]
    for label, rows in records.items():
        if not rows:
            continue
        series = [("loss_after", "-"), ("loss_before", ":")]
        if all(r.get("loss_before", r["loss_after"]) == r["loss_after"] for r in rows):  # no inner steps
            series = [("loss_after", "-")]
        for key, style in series:
            logged = [r for r in rows if key in r]  # loss_before: on the logging iterations (log_every)
            if not logged:
                continue
            iterations = np.array([r["iteration"] for r in logged])
            values = np.array([r[key] for r in logged], dtype=float)
            width = max(1, min(window * len(logged) // len(rows), len(values) // 10))
            smooth = np.convolve(values, np.ones(width) / width, mode="valid")
            ax.plot(iterations[width - 1 :], smooth, style, label=f"{label}: {key.replace('_', ' ')}")
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("query loss (moving average)")
    ax.set_title("Learning curve")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if panels == 2:
        _plot_validation(validated, axes[0][1])
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    return out


def _validation_key(row: dict) -> str | None:
    return next((key for key in row if key.startswith("val_")), None)


def _plot_validation(validated: dict[str, list[dict]], ax: Any) -> None:
    """The validation metric of each phase against training wall-clock minutes (``seconds`` of the log)."""
    for label, rows in validated.items():
        if not rows:
            continue
        key = _validation_key(rows[0])
        minutes = [r["seconds"] / 60 for r in rows]
        ax.plot(minutes, [r[key] for r in rows], "o-", ms=3, label=f"{label}: {key.removeprefix('val_')}")
        ax.set_ylabel(f"validation {key.removeprefix('val_')}")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_title("Validation during training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_sinusoid_fits(
    learners: dict[str, tuple[MetaLearner, float | None]],
    out: Path,
    support_size: int = 5,
    steps: tuple[int, ...] = (1, 10),
    seed: int = 3,
) -> Path | None:
    """Figure 2 of Finn et al. (2017): for two held-out tasks, the true function, the ``support_size``
    points, and each model's prediction before adaptation and after ``steps`` gradient steps.

    ``learners`` maps a label to ``(learner, fine-tuning rate or None for the learner's own)``. Returns the
    file written, or ``None`` without matplotlib.
    """
    if not _has_matplotlib():
        return None
    generator = torch.Generator().manual_seed(seed)
    first = next(iter(learners.values()))[0]
    dtype = next(first.parameters()).dtype
    tasks = SinusoidTasks(dtype=dtype)
    functions = tasks.sample_functions(2, generator)
    amplitude, phase = functions.amplitude, functions.phase
    batch = tasks.batch_for(functions, support_size, 1, generator)
    grid = torch.linspace(-5, 5, 200, dtype=dtype).view(1, -1, 1)
    fig = new_figure(figsize=(5 * len(learners), 7))
    axes = fig.subplots(2, len(learners), squeeze=False)
    for column, (label, (learner, lr)) in enumerate(learners.items()):
        for row in range(2):
            ax = axes[row][column]
            truth = SinusoidTasks.target(grid, amplitude[row : row + 1], phase[row : row + 1])
            ax.plot(grid.flatten(), truth.flatten(), "r", lw=2, label="ground truth")
            sx, sy = batch.support_x[row], batch.support_y[row]
            ax.plot(sx.flatten(), sy.flatten(), "k^", ms=8, label=f"{support_size} used for gradient")
            for count, style in zip((0, *steps), (":", "--", "-", "-."), strict=False):
                fast = learner.adapt(sx, sy, steps=count, inner_lr=lr)
                with torch.no_grad():
                    prediction = fast(grid[0].to(sx.device))
                name = "pre-update" if count == 0 else f"{count} grad step{'s' if count > 1 else ''}"
                ax.plot(grid.flatten(), prediction.cpu().flatten(), style, label=name)
            ax.set_title(f"{label}, K={support_size}")
            ax.set_ylim(-6, 6)
            ax.grid(alpha=0.3)
            if row == 0 and column == 0:
                ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    return out
