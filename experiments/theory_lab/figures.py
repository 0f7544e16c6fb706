"""The lab's figures, drawn from the experiments' JSON-ready results (matplotlib figures on their own Agg
canvas: no pyplot, no ``matplotlib.use``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import NullLocator

from torchmaml.plots import new_figure

SYMBOLS = {
    "smoothness": "L",
    "hessian_lipschitz": "ρ",
    "task_gradient_variance": "σ²",
    "sample_gradient_variance": "σ̃²",
    "sample_hessian_variance": "σ_H²",
}
COLOURS = {"unrolled": "C0", "three_batch": "C2", "hessian_free": "C1", "first_order": "C3"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _log_axes(ax, sizes: list) -> None:
    """Log-log axes with the swept sizes as plain tick labels on x."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.xaxis.set_minor_locator(NullLocator())


def _positive(xs: list, ys: list) -> tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_constants(data: dict, path: Path) -> Path:
    """Estimates over closed forms (linear regression), or the constants along a run."""
    if data["kind"] == "closed_form":
        fig = new_figure(figsize=(7, 3.8))
        ax = fig.subplots()
        names = [n for n in SYMBOLS if n != "hessian_lipschitz"]
        for offset, (label, point) in zip((-0.1, 0.1), data["points"].items(), strict=False):
            rows = {r["constant"]: r for r in point["comparison"]}
            ratios = [rows[n]["estimate"] / rows[n]["exact"] for n in names]
            errors = [rows[n]["error"] / rows[n]["exact"] for n in names]
            ax.errorbar([i + offset for i in range(len(names))], ratios, yerr=errors, fmt="o", capsize=3, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), [SYMBOLS[n] for n in names])
        ax.set_ylabel("estimate / closed form (± 1 s.e.)")
        ax.set_title("Linear regression: estimate / closed form (ρ = 0 exactly)")
        ax.legend()
        return _save(fig, path)
    points = data["points"]
    iterations = [p["iteration"] for p in points]
    alpha = data["inner_lr"]
    fig = new_figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for name in ("smoothness", "hessian_lipschitz"):
        values = [p["constants"][name]["value"] for p in points]
        errors = [p["constants"][name]["error"] for p in points]
        left.errorbar(iterations, values, yerr=errors, marker="o", capsize=3, label=SYMBOLS[name])
    left.axhline(1 / alpha, color="k", ls="--", lw=0.8, label="1/α")
    left.axhline(1 / (6 * alpha), color="k", ls=":", lw=0.8, label="1/(6α)")
    left.set_yscale("log")
    left.set_xlabel("meta-iteration (Adam)")
    left.set_title("Smoothness and Hessian Lipschitz constant")
    left.legend(fontsize=8)
    for name in ("task_gradient_variance", "sample_gradient_variance", "sample_hessian_variance"):
        right.plot(iterations, [p["constants"][name]["value"] for p in points], marker="o", label=SYMBOLS[name])
    right.plot(iterations, [p["reference_grad_norm"] for p in points], marker="s", label="‖∇F(w)‖")
    right.plot(*_positive(iterations, [p["gap"] for p in points]), marker="^", label="Δ = F(w) - best F")
    right.set_yscale("log")
    right.set_xlabel("meta-iteration (Adam)")
    right.set_title("Variances, stationarity, optimality gap")
    right.legend(fontsize=8)
    return _save(fig, path)


def _moment_panel(ax, data: dict, axis: str, key: str, bound_key: str, xlabel: str) -> None:
    bound = None
    for name, rows in data["moments"][axis].items():
        sizes = [r["size"] for r in rows]
        ax.plot(*_positive(sizes, [r[key] for r in rows]), "o-", color=COLOURS[name], label=data["labels"][name])
        bound = (sizes, [r[bound_key] for r in rows])
    ax.plot(*bound, "k--", label="bound")
    _log_axes(ax, bound[0])
    ax.set_xlabel(xlabel)


def plot_bias_variance(data: dict, path: Path) -> Path:
    """Bias against ``D_in`` with the fitted slopes; moments against ``D_in``, ``D_o``, ``D_h``, ``B`` with bounds."""
    fig = new_figure(figsize=(15, 8.5))
    axes = fig.subplots(2, 3)
    ax = axes[0, 0]
    for name, rows in data["bias"].items():
        sizes = [r["support_size"] for r in rows]
        slope = data["bias_slopes"][name]
        label = f"{data['labels'][name]} (slope {slope['slope']:.2f})" if slope["points"] >= 2 else data["labels"][name]
        resolved = [r for r in rows if r["bias"] > 2 * r["noise_floor"]]
        ax.errorbar(
            [r["support_size"] for r in resolved],
            [r["bias"] for r in resolved],
            yerr=[r["error"] for r in resolved],
            fmt="o-",
            color=COLOURS[name],
            capsize=3,
            label=label,
        )
        ax.plot(sizes, [r["noise_floor"] for r in rows], ":", color=COLOURS[name], lw=1)
        if "exact" in rows[0]:
            ax.plot(sizes, [r["exact"] for r in rows], "k-", lw=1, label="MAML, exact (closed form)")
    _log_axes(ax, sizes)
    ax.set_xlabel("D_in")
    ax.set_title("bias ‖E[G_i] − ∇F‖ (dotted: noise floor)")
    ax.legend(fontsize=7)
    _moment_panel(axes[0, 1], data, "support", "first_moment", "first_moment_bound", "D_in")
    axes[0, 1].set_title("first moment ‖E[G_i]‖² vs D_in")
    axes[0, 1].legend(fontsize=7)
    _moment_panel(axes[0, 2], data, "support", "second_moment", "second_moment_bound", "D_in")
    axes[0, 2].set_title("second moment E‖G_i‖² vs D_in")
    _moment_panel(axes[1, 0], data, "query", "second_moment", "second_moment_bound", "D_o")
    axes[1, 0].set_title("second moment E‖G_i‖² vs D_o")
    _moment_panel(axes[1, 1], data, "hessian", "second_moment", "second_moment_bound", "D_h")
    axes[1, 1].set_title("second moment E‖G_i‖² vs D_h")
    ax = axes[1, 2]
    for name, rows in data["batches"].items():
        sizes = [r["batch_size"] for r in rows]
        ax.plot(sizes, [r["second_moment"] for r in rows], "o", color=COLOURS[name], label=data["labels"][name])
        ax.plot(sizes, [r["prediction"] for r in rows], "-", color=COLOURS[name], lw=0.8)
        bound = (sizes, [r["bound"] for r in rows])
    ax.plot(*bound, "k--", label="bound")
    _log_axes(ax, sizes)
    ax.set_xlabel("B")
    ax.set_title("batch mean E‖Ḡ_B‖² (lines: moments' prediction)")
    ax.legend(fontsize=7)
    fig.suptitle(f"{data['family']}: meta-gradient estimators at w_0 (‖∇F(w_0)‖ = {data['grad_norm']:.3g})")
    return _save(fig, path)


def plot_complexity(data: dict, path: Path) -> Path:
    """``||grad F(w_k)||`` along the runs, and iterations to ``epsilon`` against ``1/epsilon^2`` with the bound."""
    fig = new_figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    floor = data.get("first_order_floor")
    for name, result in data["estimators"].items():
        for seed, trace in enumerate(result["traces"]):
            left.plot(
                trace["iteration"],
                trace["grad_norm"],
                color=COLOURS[name],
                lw=1 if seed == 0 else 0.5,
                alpha=1 if seed == 0 else 0.4,
                label=result["label"] if seed == 0 else None,
            )
        targets = result["targets"]
        slope = result["slope_average"]
        label = f"{result['label']}: mean criterion (slope {slope['value']:.2f})" if slope["points"] >= 2 else None
        right.plot(
            *_positive([1 / t["epsilon"] ** 2 for t in targets], [t["average"] for t in targets]),
            "o-",
            color=COLOURS[name],
            label=label or f"{result['label']}: mean criterion",
        )
        right.plot(
            *_positive([1 / t["epsilon"] ** 2 for t in targets], [t["first_median"] for t in targets]),
            "x--",
            color=COLOURS[name],
            lw=0.8,
            label=f"{result['label']}: first hit",
        )
    bound_targets = next(iter(data["estimators"].values()))["targets"]
    right.plot(
        [1 / t["epsilon"] ** 2 for t in bound_targets],
        [t["bound"] for t in bound_targets],
        "k--",
        label="bound T(ε) (MAML)",
    )
    if floor is not None:
        left.axhline(floor, color=COLOURS["first_order"], ls=":", label="FO-MAML floor (closed form)")
        right.axvline(1 / floor**2, color=COLOURS["first_order"], ls=":", label="1/floor²")
    left.set_yscale("log")
    left.set_xlabel("meta-iteration (SGD, theory step size)")
    left.set_ylabel("‖∇F(w_k)‖")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("1/ε²")
    right.set_ylabel("iterations to ε")
    right.legend(fontsize=7)
    fig.suptitle(f"{data['family']}: iterations to an ε-stationary point (batch {data['batch_size']})")
    return _save(fig, path)
