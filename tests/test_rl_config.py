"""Meta-RL configuration: presets, one-line errors."""

from __future__ import annotations

import pytest

from torchmaml.config import to_toml
from torchmaml.errors import ConfigError
from torchmaml.rl.config import build_config, load_config, preset_names


def test_presets_load_and_round_trip(tmp_path):
    assert preset_names() == ["half-cheetah-dir", "half-cheetah-vel", "navigation2d"]
    for name in preset_names():
        config = load_config(name)
        assert config.env == name and config.max_kl == 0.01 and config.inner_lr == 0.1
        path = tmp_path / f"{name}.toml"
        path.write_text(to_toml(config))
        assert load_config(str(path)) == config
    assert load_config("navigation2d").eval_rates(3) == [0.1, 0.05, 0.05]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inner_lrr": 0.1}, "inner_lrr: unknown key"),
        ({"inner_lr": -1.0}, "inner_lr: Input should be greater than 0"),
        ({"estimator": "magic"}, "estimator: Input should be"),
        ({"iterations": "many"}, "iterations: Input should be a valid integer"),
        ({"hidden": [100, 0]}, "hidden: every entry must be >= 1"),
    ],
)
def test_errors_are_one_line_config_errors(values, message):
    with pytest.raises(ConfigError) as error:
        build_config(values)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_overrides_and_unknown_presets():
    config = load_config("navigation2d", ["iterations=7", "estimator=exact", "hidden=[32]"])
    assert (config.iterations, config.estimator, config.hidden) == (7, "exact", [32])
    with pytest.raises(ConfigError, match="presets: half-cheetah-dir"):
        load_config("navigation3d")


@pytest.mark.parametrize(
    ("override", "match"),
    [("inner_lr=inf", "must be a finite number"), ("seed=18446744073709551616", "below 2\\*\\*63")],
)
def test_values_that_cannot_work_are_refused_in_one_line(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("navigation2d", [override])


def test_frame_skip_sets_the_half_cheetah_time_step_and_keeps_earlier_runs_resumable():
    pytest.importorskip("mujoco")
    from torchmaml.checkpoint import config_digest
    from torchmaml.rl.train import make_sampler

    for overrides, dt in ((["frame_skip=5"], 0.05), ([], 0.01)):  # the presets' time step is the authors' 0.01 s
        config = load_config("half-cheetah-dir", overrides)
        with make_sampler(config) as sampler:  # the twin
            assert sampler._env(1, 1).dt == pytest.approx(dt)
        with make_sampler(config.model_copy(update={"sampler": "gymnasium", "meta_batch_size": 1})) as sampler:
            assert sampler.envs.get_attr("dt")[0] == pytest.approx(dt)
    values = {**load_config("half-cheetah-dir").model_dump(), "frame_skip": None}  # unset: gymnasium's 5
    earlier = {key: value for key, value in values.items() if key != "frame_skip"}  # a run saved before the key
    assert config_digest(values) == config_digest(earlier)
    with pytest.raises(ConfigError, match="frame_skip: only the half-cheetah environments"):
        load_config("navigation2d", ["frame_skip=1"])
