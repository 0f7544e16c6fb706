"""The lab's two task families and the sizes of every experiment on them (full, and a quick smoke-test scale).

- ``linear``: ``lab_linear_family`` (d = 10, two task types, ``L = 2``) with ``alpha = 0.07`` (``6 alpha L = 0.84``),
  ``D_in = D_o = D_h = 20``; everything has a closed form.
- ``sinusoid``: the paper's sinusoid tasks on a 1-40-40-1 tanh MLP with ``alpha = 0.01``, ``D_in = D_o = D_h = 10``;
  ``grad F`` by quadrature (``SinusoidFamily``).

Population families (support and query sets of 5000 / 200 examples) stand in for each task's population when
the constants are estimated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn.functional as F

from experiments.theory_lab.bias_variance import BiasVarianceSettings
from experiments.theory_lab.complexity import ComplexitySettings
from experiments.theory_lab.constants import EstimationSettings
from torchmaml.errors import ConfigError
from torchmaml.learner import MetaLearner
from torchmaml.theory.families import ReferenceFamily
from torchmaml.theory.linear_tasks import lab_linear_family
from torchmaml.theory.sinusoid_family import SinusoidFamily

FAMILIES = ("linear", "sinusoid")


@dataclass(frozen=True)
class LabSetup:
    """A family at its training sizes, its population stand-in, the inner rate and each experiment's settings
    (``checkpoints``: iterations at which the constants are measured along a run; empty: only at ``w_0``)."""

    name: str
    family: ReferenceFamily
    population: ReferenceFamily
    inner_lr: float
    estimation: EstimationSettings
    bias: BiasVarianceSettings
    complexity: ComplexitySettings
    checkpoints: tuple[int, ...] = ()

    def learner(self) -> MetaLearner:
        """A fresh MAML learner on this family's model at ``w_0`` (model seed 0)."""
        return MetaLearner(self.family.model(0), F.mse_loss, inner_lr=self.inner_lr)


def lab_setup(name: str, quick: bool = False) -> LabSetup:
    """The setup of family ``name`` (``linear`` or ``sinusoid``); ``quick`` shrinks every budget to seconds."""
    if name == "linear":
        setup = _linear()
    elif name == "sinusoid":
        setup = _sinusoid()
    else:
        raise ConfigError(f"--family: unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return _quick(setup) if quick else setup


def _linear() -> LabSetup:
    family = dataclasses.replace(lab_linear_family(), support_size=20, query_size=20, hessian_size=20)
    return LabSetup(
        name="linear",
        family=family,
        population=dataclasses.replace(family, support_size=5000, query_size=5000, hessian_size=0),
        inner_lr=0.07,
        estimation=EstimationSettings(num_tasks=200, chunk_size=50),
        bias=BiasVarianceSettings(),
        complexity=ComplexitySettings(
            iterations=3000,
            batch_size=50,
            seeds=(0, 1),
            evaluate_every=1,
            epsilons=(0.5, 0.3, 0.2, 0.12, 0.08, 0.05, 0.03, 0.02, 0.015, 0.0125),
        ),
    )


def _sinusoid() -> LabSetup:
    family = SinusoidFamily(support_size=10, query_size=10, hessian_size=10, grid=100, nodes=8)
    return LabSetup(
        name="sinusoid",
        family=family,
        population=dataclasses.replace(family, support_size=200, query_size=200, hessian_size=0),
        inner_lr=0.01,
        estimation=EstimationSettings(num_tasks=50),
        bias=BiasVarianceSettings(
            support_sizes=(5, 10, 20, 40, 80),
            query_sizes=(5, 10, 20, 40),
            hessian_sizes=(5, 10, 20, 40),
            batch_sizes=(1, 4, 16),
            bias_tasks=1000,
            moment_tasks=1000,
        ),
        complexity=ComplexitySettings(
            iterations=6000,
            batch_size=25,
            seeds=(0,),
            evaluate_every=25,
            epsilons=(0.8, 0.6, 0.45, 0.35, 0.25, 0.18, 0.13),
        ),
        checkpoints=(0, 500, 1500, 3000),
    )


def _quick(setup: LabSetup) -> LabSetup:
    """Tiny budgets for smoke tests: a few tasks, sizes and iterations."""
    return dataclasses.replace(
        setup,
        population=dataclasses.replace(setup.population, support_size=20, query_size=20),
        estimation=EstimationSettings(num_tasks=4, power_iterations=5, directions=2, probes=2),
        bias=BiasVarianceSettings(
            support_sizes=(5, 10),
            query_sizes=(5,),
            hessian_sizes=(5,),
            batch_sizes=(1, 2),
            bias_tasks=8,
            moment_tasks=8,
        ),
        complexity=ComplexitySettings(iterations=6, batch_size=4, seeds=(0,), evaluate_every=2, epsilons=(0.9, 0.5)),
        checkpoints=(0, 3) if setup.checkpoints else (),
    )
