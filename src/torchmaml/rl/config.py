"""Configuration of a meta-RL run: TOML presets (``rl/configs/``) plus ``key=value`` overrides, validated.

Every problem (unknown key, wrong type, value out of range) becomes one ``ConfigError`` naming the key.
Presets: ``navigation2d``, ``half-cheetah-dir``, ``half-cheetah-vel`` (the paper's settings, Finn et al. 2017,
§5.3 and Appendix A.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from torchmaml.presets import rl_presets as preset_names
from torchmaml.run.config_io import build, check_values, load_values


class RLConfig(BaseModel):
    """Everything a meta-RL run needs; the resolved copy is saved in the run folder as ``config.toml``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    env: Literal["navigation2d", "half-cheetah-dir", "half-cheetah-vel"] = Field(
        "navigation2d",
        description="2D navigation, or half-cheetah direction or goal velocity (half-cheetah needs torchmaml[mujoco])",
    )
    horizon: int | None = Field(
        None,
        ge=1,
        description="steps per trajectory (unset: the environment's, 100 for navigation, 200 for half-cheetah)",
    )
    frame_skip: int | None = Field(
        None,
        ge=1,
        description=(
            "half-cheetah: MuJoCo steps of 0.01 s per action (unset: gymnasium's 5, dt 0.05 s; 1: the authors' "
            "rllab environments, dt 0.01 s)"
        ),
    )
    # meta-training
    iterations: int = Field(500, ge=1, description="meta-training iterations (TRPO outer steps)")
    time_limit_minutes: float | None = Field(
        None,
        gt=0,
        description="stop each phase after this much training time, writing its final checkpoint (unset: no limit)",
    )
    meta_batch_size: int = Field(20, ge=1, description="tasks per meta-batch")
    trajectories: int = Field(20, ge=1, description="trajectories sampled per task and adaptation step")
    inner_lr: float = Field(0.1, gt=0, description="step size of the policy-gradient inner step")
    inner_steps: int = Field(1, ge=1, le=10, description="inner policy-gradient steps in training")
    estimator: Literal["exact", "dice", "plain", "first_order"] = Field(
        "exact",
        description="meta-gradient: exact (unbiased, with a DiCE term), dice, plain (the original code's), first_order",
    )
    # policy
    hidden: list[int] = Field(
        default_factory=lambda: [100, 100], min_length=1, description="hidden layer widths of the Gaussian MLP policy"
    )
    init_log_std: float = Field(0.0, description="initial log standard deviation of the policy")
    # advantages
    discount: float = Field(0.99, gt=0, le=1, description="discount factor γ")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="GAE λ (1: Monte-Carlo returns minus the baseline)")
    value_baseline: bool = Field(
        True, description="subtract a linear feature value baseline fitted per task (formerly `baseline`)"
    )
    normalize_advantages: bool = Field(True, description="normalise the advantages of each task")
    # TRPO outer step
    max_kl: float = Field(0.01, gt=0, description="TRPO's KL limit per outer step")
    cg_iterations: int = Field(10, ge=1, description="conjugate-gradient iterations of the TRPO step")
    cg_damping: float = Field(1e-5, ge=0, description="damping added to the Fisher-vector products")
    backtrack_ratio: float = Field(0.8, gt=0, lt=1, description="step shrink factor of TRPO's line search")
    max_backtracks: int = Field(15, ge=1, description="line-search steps before TRPO gives up the step")
    fisher: Literal["exact", "post_adaptation"] = Field(
        "exact",
        description="Fisher through the adaptation (exact) or without its Jacobian (post_adaptation, much cheaper)",
    )
    fisher_subsample: int = Field(
        1, ge=1, description="Fisher-vector products on every k-th post-adaptation trajectory"
    )
    # the "pretrained on all tasks" baseline: TRPO on random tasks without adaptation (0 = none)
    pretrained_iterations: int = Field(
        0,
        ge=0,
        description="iterations of the 'pretrained' baseline: TRPO on random tasks without adaptation (0: none)",
    )
    # evaluation on held-out tasks
    eval_tasks: int = Field(40, ge=2, description="held-out tasks of the evaluation")
    eval_steps: int = Field(3, ge=0, le=20, description="adaptation steps measured by the evaluation")
    eval_lrs: list[float] = Field(
        default_factory=lambda: [0.1, 0.05],
        min_length=1,
        description="step sizes of the evaluation's adaptation steps (the last repeats)",
    )
    pretrained_lr_grid: list[float] = Field(
        default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0],
        min_length=1,
        description="step sizes tried for the pretrained and random baselines on validation tasks",
    )
    eval_seed: int = Field(2017, ge=0, description="seed of the evaluation tasks")
    sampler: Literal["batched", "gymnasium"] = Field(
        "batched",
        description=(
            "batched: every environment of a meta-batch stepped together (tensors for navigation, "
            "mujoco.batch for half-cheetah); gymnasium: gymnasium.vector environments (the same episodes, slower)"
        ),
    )
    # sampling of gymnasium environments (sampler = "gymnasium"): tasks per vectorised round, processes
    tasks_per_round: int | None = Field(
        None,
        ge=1,
        description=(
            "half-cheetah: tasks per sampling round, at most a process's share of a meta-batch (unset: the whole "
            "share at once); both samplers give the same episodes in the same rounds"
        ),
    )
    vector: Literal["sync", "async"] = Field(
        "sync",
        description="gymnasium sampler: sync (one process) or async (one process per environment) vector environments",
    )
    # bookkeeping
    seed: int = Field(0, ge=0, description="seed of the policy and the task sampler")
    policy_dtype: Literal["float32", "float64"] = Field(
        "float32",
        description="precision of the policy's parameters and TRPO step (the environments' float32 observations "
        "are converted); float64 makes runs at different world sizes agree to rounding",
    )
    checkpoint_every: int = Field(10, ge=1, description="checkpoint every N iterations")
    keep_checkpoints: int = Field(3, ge=1, description="periodic checkpoints kept (the newest)")

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("every entry must be >= 1")
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, values: Any) -> Any:
        return file_values(values) if isinstance(values, dict) else values

    @field_validator("eval_lrs", "pretrained_lr_grid")
    @classmethod
    def _positive_rates(cls, value: list[float]) -> list[float]:
        if any(not v > 0 for v in value):
            raise ValueError("every rate must be > 0")
        return value

    @model_validator(mode="after")
    def _workable_values(self) -> RLConfig:
        check_values(self.model_dump())  # control characters, non-finite numbers, integers beyond 64 bits
        if self.frame_skip is not None and self.env == "navigation2d":
            raise ValueError("frame_skip: only the half-cheetah environments have one")
        return self

    def eval_rates(self, steps: int) -> list[float]:
        """The inner step sizes of ``steps`` evaluation steps: ``eval_lrs``, its last entry repeated."""
        return [self.eval_lrs[min(k, len(self.eval_lrs) - 1)] for k in range(steps)]


RENAMED_KEYS = {"baseline": "value_baseline", "baseline_lr_grid": "pretrained_lr_grid"}  # still read


def file_values(values: dict[str, Any]) -> dict[str, Any]:
    """A config file's keys under their current names (``RENAMED_KEYS``: the names of earlier releases)."""
    return {RENAMED_KEYS.get(key, key): value for key, value in values.items()}


def build_config(values: dict[str, Any]) -> RLConfig:
    """Validate ``values``; the first problem becomes a one-line ``ConfigError``."""
    return build(RLConfig, values)


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RLConfig:
    """A preset name (``navigation2d``) or a TOML file (its ``base`` chain resolved), with ``key=value``
    overrides applied, validated."""
    return build_config(load_values(name_or_path, overrides, presets=preset_names())[1])


__all__ = ["RENAMED_KEYS", "RLConfig", "build_config", "file_values", "load_config", "preset_names"]
