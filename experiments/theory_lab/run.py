"""Run each experiment of the lab on one family and write its numbers (JSON) and its figure (PNG).

``run_constants``, ``run_bias`` and ``run_complexity`` write ``<experiment>-<family>.json`` and ``.png`` into
``out``; each returns its JSON-ready results. The constants at the starting point ``w_0`` feed the bounds of
the other two (``starting_constants``). Everything runs on one torch thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.theory_lab import figures
from experiments.theory_lab.bias_variance import bias_variance
from experiments.theory_lab.complexity import Evaluator, iteration_complexity
from experiments.theory_lab.constants import closed_form_comparison, constants_along_run
from experiments.theory_lab.estimators import lab_estimators
from experiments.theory_lab.setups import LabSetup
from torchmaml.learner import MetaLearner
from torchmaml.theory.assumptions import TheoryConstants
from torchmaml.theory.gradients import flatten
from torchmaml.theory.linear_tasks import LinearRegressionTasks
from torchmaml.theory.reference import reference_meta_gradient, reference_meta_objective


def write_json(path: Path, data: dict) -> Path:
    """``data`` as indented JSON, non-finite numbers written as ``null``."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=1) + "\n")
    return path


def starting_constants(setup: LabSetup) -> TheoryConstants:
    """``estimate_constants`` at the family's ``w_0`` on its population stand-in."""
    return setup.estimation.estimate(setup.learner(), setup.population)


def run_constants(setup: LabSetup, out: Path) -> dict:
    """Linear regression: estimates against closed forms at ``w_0`` and at MAML's minimiser. Other families: the
    constants along an Adam meta-training run at ``setup.checkpoints``."""
    learner = setup.learner()
    if isinstance(setup.family, LinearRegressionTasks):
        points = {"w_0": flatten(learner.functional.parameters()), "minimiser": setup.family.minimiser(setup.inner_lr)}
        results = closed_form_comparison(learner, setup.family, setup.population, points, setup.estimation)
        data = {"family": setup.name, "inner_lr": setup.inner_lr, "kind": "closed_form", "points": results}
    else:
        run = constants_along_run(learner, setup.family, setup.population, setup.checkpoints, setup.estimation)
        data = {"family": setup.name, "inner_lr": setup.inner_lr, "kind": "along_run", **run}
    write_json(out / f"constants-{setup.name}.json", data)
    figures.plot_constants(data, out / f"constants-{setup.name}.png")
    return data


def run_bias(setup: LabSetup, constants: TheoryConstants, out: Path) -> dict:
    """The bias/moment/batch sweeps at ``w_0`` (with the exact bias of MAML on linear regression)."""
    learner = setup.learner()
    exact = None
    if isinstance(setup.family, LinearRegressionTasks):
        family, point = setup.family, flatten(learner.functional.parameters())

        def exact(support_size: int) -> float:
            return float(family.unrolled_bias(point, setup.inner_lr, support_size).norm())

    estimators = lab_estimators(constants.hessian_lipschitz.value)
    data = bias_variance(learner, setup.family, estimators, constants, setup.bias, exact)
    labels = {n: e.label for n, e in estimators.items()}
    data = {
        "family": setup.name,
        "labels": labels,
        "hessian_free_options": dict(estimators["hessian_free"].options),
        **data,
    }
    write_json(out / f"bias-{setup.name}.json", data)
    figures.plot_bias_variance(data, out / f"bias-{setup.name}.png")
    return data


def _evaluator(setup: LabSetup) -> Evaluator:
    """Closed-form ``||grad F||`` and ``F`` for linear regression; quadrature references otherwise."""
    family = setup.family
    if isinstance(family, LinearRegressionTasks):

        def closed_form(learner: MetaLearner) -> tuple[float, float]:
            w = flatten(learner.functional.parameters())
            return float(family.meta_gradient(w, setup.inner_lr).norm()), family.meta_objective(w, setup.inner_lr)

        return closed_form

    def quadrature(learner: MetaLearner) -> tuple[float, float]:
        return float(reference_meta_gradient(learner, family).norm()), reference_meta_objective(learner, family)

    return quadrature


def run_complexity(setup: LabSetup, constants: TheoryConstants, out: Path) -> dict:
    """MAML, FO-MAML and HF-MAML with the theory-guided step size; the FO-MAML floor in closed form when known."""
    estimators = lab_estimators(constants.hessian_lipschitz.value)
    estimators.pop("three_batch")
    data = iteration_complexity(
        lambda: setup.family.model(0),
        F.mse_loss,
        setup.inner_lr,
        estimators,
        setup.family,
        constants,
        setup.complexity,
        _evaluator(setup),
    )
    sizes = {
        "support": setup.family.support_size,
        "query": setup.family.query_size,
        "hessian": setup.family.hessian_size,
    }
    data = {"family": setup.name, "sizes": sizes, **data}
    if isinstance(setup.family, LinearRegressionTasks):
        data["first_order_floor"] = setup.family.first_order_floor(setup.inner_lr)
    write_json(out / f"complexity-{setup.name}.json", data)
    figures.plot_complexity(data, out / f"complexity-{setup.name}.png")
    return data


def single_thread() -> None:
    """One torch thread: the experiments are small, and the machine is shared."""
    torch.set_num_threads(1)
