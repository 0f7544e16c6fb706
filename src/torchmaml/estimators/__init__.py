"""Meta-gradient estimators, selectable by name: ``MetaLearner(..., estimator=NAME, estimator_options={...})``.

Each estimator is a small frozen dataclass whose fields are its options and whose ``__call__`` is the
per-task ``TaskGradient`` (see ``estimators.base``). ``ESTIMATORS`` maps names to these classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import InnerProblem, MetaParams, Metrics, Task, TaskGradient
from torchmaml.estimators.hessian_free import HessianFree
from torchmaml.estimators.implicit import Implicit
from torchmaml.estimators.reptile import Reptile
from torchmaml.estimators.three_batch import ThreeBatch
from torchmaml.estimators.unrolled import FirstOrder, Unrolled

ESTIMATORS: dict[str, type] = {
    "unrolled": Unrolled,
    "first_order": FirstOrder,
    "three_batch": ThreeBatch,
    "hessian_free": HessianFree,
    "implicit": Implicit,
    "reptile": Reptile,
}


def get_estimator(name: str, options: Mapping[str, Any] | None = None) -> TaskGradient:
    """The estimator registered as ``name`` built with ``options``; a one-line ``ConfigError`` otherwise."""
    try:
        factory = ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"estimator: unknown estimator {name!r}; choose one of {', '.join(sorted(ESTIMATORS))}"
        ) from None
    allowed = [f.name for f in dataclasses.fields(factory) if f.init]
    for key in options or {}:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ConfigError(f"estimator_options: {key!r} is not an option of {name!r} (its options: {known})")
    try:
        return factory(**(options or {}))
    except TypeError as error:
        raise ConfigError(f"estimator_options for {name!r}: {error}") from None


__all__ = ["ESTIMATORS", "InnerProblem", "MetaParams", "Metrics", "Task", "TaskGradient", "get_estimator"]
