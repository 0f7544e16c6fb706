"""Figures of a meta-RL run: the learning curve, returns against adaptation steps, and the paper's Figure 4
(2D navigation trajectories before and after adaptation). Each figure is drawn on its own Agg canvas (no
pyplot, no ``matplotlib.use``: the caller's backend is left alone)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from torchmaml.plots import new_figure
from torchmaml.rl.episodes import Episodes
from torchmaml.rl.navigation import move_of
from torchmaml.run.files import save_figure


def plot_learning_curve(records: dict[str, list[dict]], out_dir: Path, window: int = 10) -> Path:
    """Mean return before and after adaptation (moving average over up to ``window`` iterations) against
    environment steps (every episode sampled in training, before and after adaptation; the iteration where
    a record has no ``env_steps``) and against training wall-clock minutes."""
    out = Path(out_dir) / "learning_curve.png"
    fig = new_figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    counted = all("env_steps" in r for rows in records.values() for r in rows)
    for label, rows in records.items():
        if not rows:
            continue
        position = np.array([r["env_steps"] / 1e6 if counted else r["iteration"] for r in rows])
        minutes = np.array([r["seconds"] for r in rows]) / 60
        series = [("return_after", "-")] if label != "pretrained" else []
        series.append(("return_before", ":"))
        width = max(1, min(window, len(rows) // 10))
        for key, style in series:
            values = np.convolve([r[key] for r in rows], np.ones(width) / width, mode="valid")
            name = f"{label}: {'after' if key == 'return_after' else 'before'} adaptation"
            axes[0].plot(position[width - 1 :], values, style, label=name)
            axes[1].plot(minutes[width - 1 :], values, style, label=name)
    axes[0].set_xlabel("environment steps (millions)" if counted else "meta-iteration")
    axes[1].set_xlabel("training wall-clock (minutes)")
    axes[0].set_ylabel("mean return (moving average)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Learning curve")
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return out


def plot_returns(results: list[dict], out: Path) -> Path:
    """Mean return on held-out tasks against the number of adaptation steps, with 95% confidence intervals."""
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for model in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == model]
        ax.errorbar(
            [r["steps"] for r in rows],
            [r["mean"] for r in rows],
            yerr=[r["ci95"] for r in rows],
            capsize=3,
            label=model,
        )
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("mean return (95% CI)")
    ax.set_xticks(sorted({r["steps"] for r in results}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return out


def plot_navigation(
    phases: list[Episodes], goals: np.ndarray, out: Path, steps: tuple[int, ...] = (0, 1, 3), per_task: int = 4
) -> Path:
    """Figure 4 of Finn et al. (2017): point-mass trajectories on held-out goals before adaptation and after
    ``steps`` policy-gradient steps (``phases[k]`` sampled after ``k`` steps), one panel per goal."""
    steps = tuple(k for k in steps if k < len(phases))
    fig = new_figure(figsize=(4.2 * len(goals), 4.2))
    axes = fig.subplots(1, len(goals), squeeze=False)
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(steps)))
    for task, ax in enumerate(axes[0]):
        for colour, k in zip(colours, steps, strict=True):
            episodes = phases[k]
            for n in range(min(per_task, episodes.mask.shape[1])):
                length = int(episodes.mask[task, n].sum())
                moves = move_of(episodes.actions[task, n, :length])
                path = np.vstack([np.zeros(2), moves.cumsum(0).numpy()])
                label = ("pre-update" if k == 0 else f"{k} step{'s' * (k > 1)}") if n == 0 else None
                ax.plot(path[:, 0], path[:, 1], color=colour, alpha=0.8, lw=1.2, label=label)
        ax.scatter(*goals[task], marker="*", s=250, color="tab:red", zorder=5, label="goal")
        ax.scatter(0, 0, marker="o", s=30, color="black", zorder=5)
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_title(f"goal ({goals[task][0]:+.2f}, {goals[task][1]:+.2f})")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("MAML on 2D navigation: trajectories before and after adaptation")
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return out
