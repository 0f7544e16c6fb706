"""The theory lab's experiments (``experiments/theory_lab``, outside the package): the bias measurement recovers
MAML's closed-form bias, the control variate has mean zero, the complexity criteria read traces as documented,
and every experiment and the report write valid JSON, PNG and Markdown at smoke-test scale, from Python and
from the command line (``python -m experiments.theory_lab``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchmaml import MetaLearner
from torchmaml.theory.gradients import flatten, task_meta_gradients
from torchmaml.theory.linear_tasks import lab_linear_family
from torchmaml.theory.reference import reference_task_gradients

# The theory lab is research code at the repository root (experiments/theory_lab), not part of the package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.theory_lab.bias_variance import (  # noqa: E402
    BiasVarianceSettings,
    measure_bias,
    population_query_batch,
)
from experiments.theory_lab.commands import main  # noqa: E402
from experiments.theory_lab.complexity import average_hit, first_hit, plateau, thin  # noqa: E402
from experiments.theory_lab.control_variate import control_variates  # noqa: E402
from experiments.theory_lab.estimators import lab_estimators  # noqa: E402

ALPHA = 0.07
PNG = b"\x89PNG\r\n\x1a\n"


def test_measured_bias_recovers_the_closed_form_and_the_unbiased_estimator():
    family = lab_linear_family()
    learner = MetaLearner(family.model(), F.mse_loss, inner_lr=ALPHA)
    point = flatten(learner.functional.parameters())
    estimators = {name: lab for name, lab in lab_estimators(0.0).items() if name in ("unrolled", "three_batch")}
    settings = BiasVarianceSettings(support_sizes=(5, 20), bias_tasks=1500)
    rows = measure_bias(
        learner, family, estimators, settings, lambda n: float(family.unrolled_bias(point, ALPHA, n).norm())
    )
    for row in rows["unrolled"]:
        assert row["bias"] > 2 * row["noise_floor"]
        assert abs(row["bias"] - row["exact"]) <= 4 * row["error"], row
    for row in rows["three_batch"]:  # independent Hessian batch: exactly unbiased on linear regression
        assert row["bias"] <= 4 * row["noise_floor"], row


def test_control_variate_has_mean_zero_and_removes_noise():
    family = lab_linear_family()
    learner = MetaLearner(family.model(), F.mse_loss, inner_lr=ALPHA)
    generator = torch.Generator().manual_seed(1)
    tasks = family.sample_tasks(2000, generator)
    sampled, population = family.batch_for(tasks, 10, 1, 10, generator), family.population_batch(tasks)
    batch = population_query_batch(sampled, population)
    noise = control_variates(learner, batch, "support")
    assert (noise.mean(0).abs() <= 4 * noise.std(0) / noise.shape[0] ** 0.5).all()
    residual = task_meta_gradients(learner, batch, "unrolled") - reference_task_gradients(learner, family, tasks)
    assert (residual - noise).var(0).sum() < 0.1 * residual.var(0).sum()


def test_complexity_criteria_read_a_trace():
    traces = [
        {"iteration": [0, 10, 20, 30], "grad_norm": [1.0, 0.5, 0.2, 0.3]},
        {"iteration": [0, 10, 20, 30], "grad_norm": [1.0, 0.3, 0.2, 0.1]},
    ]
    assert first_hit(traces[0], 0.25) == 20 and first_hit(traces[0], 0.1) is None
    # mean over seeds: 1.0, 0.4, 0.2, 0.2; running means 1.0, 0.7, 0.533, 0.45 after 1..4 iterates
    assert average_hit(traces, 0.7) == 20 and average_hit(traces, 0.5) is None
    assert plateau(traces[1]) == 0.1
    assert thin({"a": list(range(10))}, points=3) == {"a": [0, 3, 6, 9]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory") / "docs"
    assert main(["report", "--out", str(out), "--quick"]) == 0
    return out


def test_report_writes_every_figure_table_and_the_page(report):
    for experiment in ("constants", "bias", "complexity"):
        for family in ("linear", "sinusoid"):
            data = json.loads((report / "theory" / f"{experiment}-{family}.json").read_text())
            assert data["family"] == family
            assert (report / "theory" / f"{experiment}-{family}.png").read_bytes()[:8] == PNG
    page = (report / "theory.md").read_text()
    assert "python -m experiments.theory_lab report --out docs --quick" in page
    assert page.count("](theory/") == 6 and "## Where measurement and theory agree" in page


def test_the_page_states_the_machine_it_ran_on(report):
    page = (report / "theory.md").read_text()
    cpus = os.cpu_count()
    assert f"with {cpus} logical CPU{'s' if cpus > 1 else ''} (" in page
    assert "2-core" not in page and "shared with other jobs" not in page


def test_report_numbers_are_the_measured_ones(report):
    linear = json.loads((report / "theory" / "complexity-linear.json").read_text())
    assert linear["first_order_floor"] > 0 and set(linear["estimators"]) == {"unrolled", "first_order", "hessian_free"}
    bias = json.loads((report / "theory" / "bias-linear.json").read_text())
    assert all("exact" in row for row in bias["bias"]["unrolled"])
    constants = json.loads((report / "theory" / "constants-linear.json").read_text())
    assert {r["constant"] for r in constants["points"]["w_0"]["comparison"]} >= {"smoothness", "hessian_lipschitz"}


def test_single_experiment_from_the_command_line(tmp_path, capsys):
    assert main(["constants", "--family", "linear", "--out", str(tmp_path), "--quick"]) == 0
    assert "constants-linear.json" in capsys.readouterr().out
    assert json.loads((tmp_path / "constants-linear.json").read_text())["kind"] == "closed_form"


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["bias", "--family", "omniglot", "--out", str(tmp_path), "--quick"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m experiments.theory_lab: error: --family: unknown family 'omniglot'")
    assert error.count("\n") == 1
    file = tmp_path / "file"
    file.write_text("")
    assert main(["constants", "--out", str(file), "--quick"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _lab(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_the_lab_runs_as_a_module_from_the_repository_root(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "experiments.theory_lab", "constants", "--out", str(tmp_path), "--quick"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "constants-linear.json").read_text())["kind"] == "closed_form"
    assert (tmp_path / "constants-linear.png").read_bytes()[:8] == PNG


def test_the_lab_without_matplotlib_names_the_extra(tmp_path):
    argv = ["experiments.theory_lab", "constants", "--family", "linear", "--out", str(tmp_path)]
    done = _lab(
        "import runpy, sys\n"
        "sys.modules['matplotlib'] = None\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_module('experiments.theory_lab', run_name='__main__', alter_sys=True)"
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        'python -m experiments.theory_lab: error: Plots need matplotlib: pip install "torchmaml[plots]"'
    ]


def test_the_lab_figures_leave_the_callers_backend_alone(tmp_path):
    done = _lab(
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from experiments.theory_lab.commands import main\n"
        f"assert main(['constants', '--family', 'linear', '--out', {str(tmp_path)!r}, '--quick']) == 0\n"
        "print(matplotlib.get_backend(), matplotlib.rcParams['backend'], 'matplotlib.pyplot' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["svg", "svg", "False"], done.stdout


def test_make_theory_runs_the_lab(tmp_path):
    done = subprocess.run(
        ["make", "-n", "theory", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'venv'}/bin/python -m experiments.theory_lab report --out docs" in done.stdout
    assert "torchmaml theory" not in done.stdout
