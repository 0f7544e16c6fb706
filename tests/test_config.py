"""Presets, overrides and validation: every bad value is one line naming the key."""

from __future__ import annotations

import pytest

from torchmaml.config import TrainConfig, build_config, load_config, parse_override, preset_names, to_toml
from torchmaml.errors import ConfigError


def test_presets_load_and_round_trip(tmp_path):
    assert {"sinusoid", "sinusoid-demo"} <= set(preset_names())
    config = load_config("sinusoid")
    assert (config.iterations, config.meta_batch_size, config.inner_lr) == (70_000, 25, 0.01)
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(config))
    assert load_config(str(path)) == config


def test_overrides_are_typed():
    config = load_config("sinusoid", ["iterations=12", "inner_lr=0.5", "eval_steps=[0, 3]", "estimator=first_order"])
    assert config.iterations == 12 and config.inner_lr == 0.5 and config.eval_steps == [0, 3]
    assert config.estimator == "first_order"
    assert parse_override("device=cuda:0") == ("device", "cuda:0")


@pytest.mark.parametrize(
    "override,message",
    [
        ("itterations=5", "itterations: unknown key"),
        ("iterations=0", "iterations: Input should be greater than or equal to 1 (got 0)"),
        ("iterations=ten", "iterations: Input should be a valid integer"),
        ("iterations=2.5", "iterations: Input should be a valid integer"),
        ("inner_lr=0", "inner_lr: Input should be greater than 0"),
        ("inner_lr=-0.1", "inner_lr: Input should be greater than 0"),
        ("estimator=magic", "estimator: unknown estimator 'magic'"),
        ("strategy=chunked", "strategy 'chunked' needs chunk_size"),
        ("hidden=[40, 0]", "hidden: every entry must be >= 1"),
        ("pretrained_baseline=yes", "pretrained_baseline: Input should be a valid boolean"),
        ("device=tpu", "device: must be 'cpu', 'cuda' or 'cuda:N'"),
        ("noequals", "expected key=value"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("sinusoid", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match=r"presets: .*sinusoid"):
        load_config("nonexistent-preset")


def test_broken_toml_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("iterations = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(path))


def test_defaults_are_the_paper_protocol():
    config = build_config({})
    assert isinstance(config, TrainConfig)
    assert config.support_size == 10 and config.hidden == [40, 40] and config.outer_lr == 1e-3


def test_combinations_that_cannot_work_are_refused_up_front():
    with pytest.raises(ConfigError, match="multi_step_loss_iterations: the multi-step loss"):
        load_config("sinusoid", ["estimator=reptile", "multi_step_loss_iterations=5"])
    with pytest.raises(ConfigError, match="learned rates would get no gradient"):
        load_config("sinusoid-metasgd", ["estimator=implicit"])
    with pytest.raises(ConfigError, match="baseline: the joint-training baseline"):
        load_config("omniglot-5w1s", ["pretrained_baseline=true"])
    with pytest.raises(ConfigError, match="stop_at_epsilon needs the stationarity monitor"):
        load_config("sinusoid", ["stop_at_epsilon=0.1"])
    with pytest.raises(ConfigError, match="no published constant c for estimator 'implicit'"):
        load_config("sinusoid", ["outer_optimizer=theory", "estimator=implicit"])
