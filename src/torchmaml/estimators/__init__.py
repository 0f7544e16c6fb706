"""Meta-gradient estimators, selectable by name: ``MetaLearner(..., estimator=NAME, estimator_options={...})``.

Each estimator is a small frozen dataclass whose fields are its options and whose ``__call__`` is the
per-task ``TaskGradient`` (see ``estimators.base``); its class declares what it can do (``Estimator``:
learned inner rates, the multi-step loss, per-step layers, its theory step-size constant), which the
configuration queries. ``ESTIMATORS`` maps names to these classes: adding an estimator is one module here, one
line in that map, and its tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, SolverWatch, Task, TaskGradient
from torchmaml.estimators.chaser import Chaser, PredictiveLikelihood
from torchmaml.estimators.hessian_free import HessianFree
from torchmaml.estimators.implicit import Implicit
from torchmaml.estimators.reptile import Reptile
from torchmaml.estimators.three_batch import ThreeBatch
from torchmaml.estimators.unrolled import FirstOrder, Unrolled

ESTIMATORS: dict[str, type[Estimator]] = {
    "unrolled": Unrolled,
    "first_order": FirstOrder,
    "three_batch": ThreeBatch,
    "hessian_free": HessianFree,
    "implicit": Implicit,
    "reptile": Reptile,
    "chaser": Chaser,
    "bfa": PredictiveLikelihood,
}
DEFAULT_ESTIMATOR = "unrolled"


def estimator_class(name: str) -> type[Estimator]:
    """The class registered as ``name`` (its declared capabilities, see ``Estimator``); a ``ConfigError`` if
    there is none."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"estimator: unknown estimator {name!r}; choose one of {', '.join(sorted(ESTIMATORS))}"
        ) from None


def estimators_with(capability: str) -> list[str]:
    """The names of the estimators that declare ``capability`` (e.g. ``"differentiates_inner_loop"``)."""
    return [name for name, cls in ESTIMATORS.items() if getattr(cls, capability)]


def get_estimator(name: str, options: Mapping[str, Any] | None = None) -> TaskGradient:
    """The estimator registered as ``name`` built with ``options``; a one-line ``ConfigError`` otherwise."""
    factory = estimator_class(name)
    allowed = [f.name for f in dataclasses.fields(factory) if f.init]
    for key in options or {}:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ConfigError(f"estimator_options: {key!r} is not an option of {name!r} (its options: {known})")
    try:
        return factory(**(options or {}))
    except TypeError as error:
        raise ConfigError(f"estimator_options for {name!r}: {error}") from None


__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "Estimator",
    "InnerProblem",
    "MetaParams",
    "Metrics",
    "SolverWatch",
    "Task",
    "TaskGradient",
    "estimator_class",
    "estimators_with",
    "get_estimator",
]
