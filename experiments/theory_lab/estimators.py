"""The estimators the lab compares, with the labels its figures use and where each takes its Hessian."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from experiments.theory_lab.control_variate import HessianBatch
from torchmaml.estimators import TaskGradient, get_estimator


@dataclass(frozen=True)
class LabEstimator:
    """A registered estimator (``name``, ``options``), its label, and its Hessian batch for the control variate."""

    name: str
    label: str
    hessian_batch: HessianBatch
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> TaskGradient:
        return get_estimator(self.name, self.options)


def lab_estimators(hessian_lipschitz: float) -> dict[str, LabEstimator]:
    """MAML (``unrolled``: Hessian on ``D_in``), ``three_batch`` (independent ``D_h``), HF-MAML (the paper's
    ``delta = 1/(6 rho alpha ||v||)`` with the measured ``rho``, or ``delta = 1e-3`` when ``rho`` is 0, where any
    difference step is exact) and FO-MAML, by registry name."""
    step = {"rho": hessian_lipschitz} if hessian_lipschitz > 0 else {"delta": 1e-3}
    return {
        "unrolled": LabEstimator("unrolled", "MAML", "support"),
        "three_batch": LabEstimator("three_batch", "MAML, independent D_h", "independent"),
        "hessian_free": LabEstimator("hessian_free", "HF-MAML", "independent", step),
        "first_order": LabEstimator("first_order", "FO-MAML", "none"),
    }
