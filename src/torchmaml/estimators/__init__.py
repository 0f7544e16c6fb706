"""Meta-gradient estimators, selectable by name: ``MetaLearner(..., estimator=NAME)``."""

from __future__ import annotations

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import InnerProblem, MetaParams, Metrics, Task, TaskGradient
from torchmaml.estimators.unrolled import first_order, unrolled

ESTIMATORS: dict[str, TaskGradient] = {
    "unrolled": unrolled,
    "first_order": first_order,
}


def get_estimator(name: str) -> TaskGradient:
    """The estimator registered as ``name``; a ``ConfigError`` listing the choices otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ConfigError(
            f"estimator: unknown estimator {name!r}; choose one of {', '.join(sorted(ESTIMATORS))}"
        ) from None


__all__ = ["ESTIMATORS", "InnerProblem", "MetaParams", "Metrics", "Task", "TaskGradient", "get_estimator"]
