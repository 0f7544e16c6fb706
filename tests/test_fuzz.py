"""Fuzzing: random malformed configs and task batches always end in a clean, typed error (or work)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchmaml import MetaLearner, TaskBatch, TorchMAMLError
from torchmaml.config import TrainConfig, build_config, parse_override
from torchmaml.errors import ConfigError
from torchmaml.models import mlp

KEYS = [*TrainConfig.model_fields, "itterations", "lr", "", "inner lr"]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-5, 50), st.floats(-1, 1), st.text(max_size=3)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_random_configs_validate_or_fail_with_one_line(values):
    try:
        config = build_config(values)
    except ConfigError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert isinstance(config, TrainConfig)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_random_override_text_is_parsed_or_refused_cleanly(text):
    try:
        key, _ = parse_override(text)
    except ConfigError:
        return
    assert key


DTYPES = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool])
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=4)


def make_tensor(shape, dtype):
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=dtype)
    return torch.ones(shape, dtype=dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(SHAPES, DTYPES), min_size=4, max_size=4), st.sampled_from(["vmap", "loop"]))
def test_random_task_batches_fail_cleanly(fields, strategy):
    learner = MetaLearner(mlp(1, [4], 1), F.mse_loss, inner_lr=0.1, strategy=strategy)
    try:
        batch = TaskBatch(*(make_tensor(shape, dtype) for shape, dtype in fields))
        learner.meta_gradient(batch)
    except TorchMAMLError as error:
        assert str(error) and "\n" not in str(error)


@pytest.mark.parametrize("bad", ["0.1", None, float("nan"), True, [0.1]])
def test_learner_rejects_non_numeric_rates(bad):
    with pytest.raises(ConfigError, match="inner_lr"):
        MetaLearner(mlp(), F.mse_loss, inner_lr=bad)
