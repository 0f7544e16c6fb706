"""The supervised learning-curve figure: a validation panel appears exactly when the run validated; plotting
leaves the caller's matplotlib backend alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image

from torchmaml.plots import plot_learning_curve

ROOT = Path(__file__).resolve().parents[1]


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


def test_plotting_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook or GUI chose its backend; importing the plot modules and drawing every kind of figure keeps it
    (no ``matplotlib.use("Agg")``) and never loads pyplot's global figure state."""
    code = f"""
import sys
import matplotlib
matplotlib.use("svg")  # the caller's choice: anything but Agg
before = (matplotlib.get_backend(), matplotlib.rcParams["backend"])
import torch.nn.functional as F
from torchmaml import MetaLearner
from torchmaml.models import mlp
import torchmaml.plots as plots
import torchmaml.rl.plots as rl_plots
out = __import__("pathlib").Path({str(tmp_path)!r})
rows = [{{"iteration": i, "loss_before": 1.5, "loss_after": 1.0 / i, "seconds": i, "val_loss": 0.5}}
        for i in range(1, 30)]
assert plots.plot_learning_curve({{"maml": rows}}, out / "curve.png") is not None
assert plots.plot_sinusoid_fits({{"maml": (MetaLearner(mlp(), F.mse_loss, inner_lr=0.01), None)}}, out / "fits.png")
returns = [{{"model": "maml", "steps": k, "mean": -10.0 + k, "ci95": 1.0}} for k in range(3)]
rl_plots.plot_returns(returns, out / "returns.png")
after = (matplotlib.get_backend(), matplotlib.rcParams["backend"])
print(before, after, "matplotlib.pyplot" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["('svg',", "'svg')", "('svg',", "'svg')", "False"], done.stdout
    for name in ("curve.png", "fits.png", "returns.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rl_learning_curve_runs_along_environment_steps(tmp_path, monkeypatch):
    """The meta-RL curve's first panel is against the environment steps counted in the records (the budget
    the paper's curves use), falling back to the iteration for records without them."""
    import torchmaml.rl.plots as rl_plots

    drawn = {}
    monkeypatch.setattr(rl_plots, "save_figure", lambda fig, out, dpi: drawn.update({out.name: fig}))
    rows = [
        {"iteration": i, "return_before": -i, "return_after": i, "seconds": 3.0 * i, "env_steps": 80_000 * i}
        for i in range(1, 21)
    ]
    rl_plots.plot_learning_curve({"maml": rows}, tmp_path)
    steps_axis = drawn["learning_curve.png"].axes[0]
    assert steps_axis.get_xlabel() == "environment steps (millions)"
    assert steps_axis.lines[0].get_xdata()[-1] == 1.6  # 20 iterations of 80,000 steps
    plain = [{key: value for key, value in row.items() if key != "env_steps"} for row in rows]
    rl_plots.plot_learning_curve({"maml": plain}, tmp_path)
    assert drawn["learning_curve.png"].axes[0].get_xlabel() == "meta-iteration"
    assert drawn["learning_curve.png"].axes[0].lines[0].get_xdata()[-1] == 20
