"""Supervised run configuration: TOML presets plus ``--set key=value`` overrides, validated by pydantic.

Every problem with a configuration (unknown key, wrong type, value out of range) becomes one
``ConfigError`` whose message names the key and what is allowed. Reading files, presets and overrides is
``torchmaml.run.config_io``, shared with meta-RL.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from torchmaml.errors import ConfigError, one_of
from torchmaml.estimators import DEFAULT_ESTIMATOR, ESTIMATORS, estimator_class, estimators_with, get_estimator
from torchmaml.execution import STRATEGIES
from torchmaml.presets import supervised_presets as preset_names
from torchmaml.run.config_io import (
    build,
    check_values,
    describe_validation_error,
    load_values,
    parse_override,
    read_toml,
    tomllib,
)
from torchmaml.run.config_io import to_toml as config_toml

SECTIONS: dict[str, tuple[str, ...]] = {
    "data": (
        "benchmark",
        "support_size",
        "query_size",
        "data_dir",
        "download",
        "cache_dir",
        "split",
        "color",
        "class_fractions",
        "split_seed",
        "ways",
        "shots",
        "queries",
        "image_size",
        "language_group",
        "words_per_class",
        "max_length",
        "hessian_size",
        "train_tasks",
        "phase_range",
        "frequency_range",
        "noise_fraction",
    ),
    "model": (
        "hidden",
        "filters",
        "strided",
        "batch_norm",
        "text_model",
        "text_embedding",
        "text_hidden",
        "text_heads",
        "text_layers",
    ),
    "inner": ("inner_lr", "inner_steps", "inner_lr_mode", "adapt_only", "inner_update"),
    "bayesian": ("particles", "prior_std", "noise_std", "noise_init_std"),
    "outer": (
        "iterations",
        "meta_batch_size",
        "estimator",
        "estimator_options",
        "outer_optimizer",
        "outer_lr",
        "outer_lr_schedule",
        "min_outer_lr",
        "alpha_hyper_lr",
        "beta_hyper_lr",
    ),
    "schedule": ("multi_step_loss_iterations", "first_order_iterations"),
    "theory": (
        "theory_smoothness",
        "theory_hessian_lipschitz",
        "theory_c",
        "theory_batch_size",
        "theory_every",
        "stationarity_every",
        "stationarity_tasks",
        "stop_at_epsilon",
    ),
    "eval": (
        "eval_tasks",
        "eval_support_sizes",
        "eval_query_size",
        "eval_steps",
        "eval_seed",
        "validate_every",
        "val_tasks",
        "pretrained_baseline",
        "pretrained_iterations",
        "pretrained_lr_grid",
    ),
    "run": (
        "seed",
        "time_limit_minutes",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "max_consecutive_skips",
        "strategy",
        "chunk_size",
        "compile",
        "dtype",
        "device",
        "threads",
    ),
}
SECTION_OF = {key: section for section, keys in SECTIONS.items() for key in keys}
RENAMED_KEYS = {  # the names of earlier releases, still read
    "baseline": "pretrained_baseline",
    "baseline_iterations": "pretrained_iterations",
    "baseline_lr_grid": "pretrained_lr_grid",
}


def flat_values(values: dict[str, Any]) -> dict[str, Any]:
    """A configuration's keys with its sections (``[inner] inner_lr = 0.4``) lifted to the top level, as the
    ``TrainConfig`` fields are named. A flat file (every key at the top, as run folders and presets of earlier
    releases are written) passes through unchanged; a key in the wrong section is a ``ConfigError``; a key given
    both at the top and in its section takes the section's value. Keys renamed since
    (``RENAMED_KEYS``: ``baseline`` is now ``pretrained_baseline``) are read under their old names too."""
    flat = {RENAMED_KEYS.get(key, key): value for key, value in values.items() if key not in SECTIONS}
    for section in SECTIONS:
        table = values.get(section)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table of keys, e.g. [{section}] then key = value lines")
        for name, value in table.items():
            key = RENAMED_KEYS.get(name, name)
            if SECTION_OF.get(key) != section:
                home = f"it belongs in [{SECTION_OF[key]}]" if key in SECTION_OF else "unknown key"
                raise ConfigError(f"{section}.{key}: {home}; [{section}] holds {', '.join(SECTIONS[section])}")
            flat[key] = value
    return flat


file_values = flat_values  # what ``torchmaml.presets`` applies to each file of a base chain before merging


def sectioned_values(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flat_values`: the keys of ``flat`` grouped in their sections, in section order;
    ``None`` values are left out (TOML has no null) and keys of no section stay at the top."""
    top = {key: value for key, value in flat.items() if key not in SECTION_OF and value is not None}
    tables = {
        section: {key: flat[key] for key in keys if flat.get(key) is not None} for section, keys in SECTIONS.items()
    }
    return {**top, **{section: table for section, table in tables.items() if table}}


class TrainConfig(BaseModel):
    """Everything a training run needs; the resolved copy is saved in the run folder as ``config.toml``.

    The fields are grouped in the sections of ``SECTIONS`` (data, model, inner, outer, schedule, theory, eval,
    run), which is how config files write them (``[inner]`` then ``inner_lr = 0.4``); a key keeps one name
    everywhere: in its section, in ``--set inner_lr=0.4`` and as the attribute ``config.inner_lr``. Flat files
    (every key at the top) load too."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    benchmark: str = Field(
        "sinusoid",
        description="task family (`torchmaml.benchmark.BENCHMARKS`): sinusoid regression, omniglot, folder "
        "(your images, `root/<class>/<image>`), languages (words of 42 languages) or text_folder (your texts, "
        "`root/<class>/<file>.txt`)",
    )
    hessian_size: int = Field(
        0,
        ge=0,
        description="examples per task (classification: per class) of the independent Hessian set D_h that "
        "training tasks draw for the estimators that take one (three_batch, hessian_free); 0: none",
    )
    train_tasks: int = Field(
        0,
        ge=0,
        description="meta-train on a fixed set of this many tasks, drawn once with their examples (the finite "
        "task sets of Bayesian MAML's sinusoid experiments); 0: a new task at every draw. Evaluation uses new tasks",
    )
    # outer loop
    iterations: int = Field(70_000, ge=1, description="meta-training iterations (outer steps)")
    time_limit_minutes: float | None = Field(
        None,
        gt=0,
        description="stop each phase after this much training time, writing its final checkpoint (unset: no limit)",
    )
    meta_batch_size: int = Field(25, ge=1, description="tasks per meta-batch")
    outer_lr: float = Field(1e-3, gt=0, description="outer (meta) learning rate")
    # inner loop
    inner_lr: float = Field(
        0.01, gt=0, description="inner-loop step size α (the initial value when inner_lr_mode learns it)"
    )
    inner_steps: int = Field(1, ge=0, le=100, description="inner gradient steps per task in training")
    estimator: str = Field(
        DEFAULT_ESTIMATOR, description="meta-gradient estimator (`torchmaml.estimators.ESTIMATORS`, docs/estimators.md)"
    )
    estimator_options: dict[str, float | int | bool | str] = Field(
        default_factory=dict,
        description="options of the estimator: the fields of its class (docs/python-api.md), e.g. {checkpoint = true}",
    )
    inner_lr_mode: Literal["fixed", "scalar", "meta_sgd", "per_layer_per_step"] = Field(
        "fixed",
        description="fixed α, one learned scalar, Meta-SGD (one rate per weight) or MAML++ per-layer per-step rates",
    )
    adapt_only: list[str] | None = Field(
        None, description="ANIL: names or module prefixes of the parameters that take inner steps (unset: all)"
    )
    # outer optimiser and MAML++ schedules
    outer_optimizer: Literal["adam", "sgd", "alpha_maml", "theory"] = Field(
        "adam", description="adam, sgd, alpha_maml (hypergradient-tuned rates) or theory (the Fallah et al. step size)"
    )
    outer_lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant outer rate or cosine annealing over the run"
    )
    min_outer_lr: float = Field(0.0, ge=0, description="the outer rate at the end of a cosine schedule")
    alpha_hyper_lr: float = Field(1e-4, ge=0, description="alpha_maml: hypergradient rate of the inner step size")
    beta_hyper_lr: float = Field(1e-6, ge=0, description="alpha_maml: hypergradient rate of the outer step size")
    theory_smoothness: float | None = Field(
        None, gt=0, description="theory step size: the smoothness L (unset: estimated, see theory_every)"
    )
    theory_hessian_lipschitz: float | None = Field(
        None, ge=0, description="theory step size: the Hessian Lipschitz constant ρ (unset: estimated; theory_every)"
    )
    theory_c: float | None = Field(
        None, gt=0, description="theory step size: the constant c (unset: the paper's for the estimator)"
    )
    theory_every: int = Field(
        100,
        ge=0,
        description="theory step size: re-estimate the unset L and ρ every this many iterations on an independent "
        "batch, so β follows the local smoothness (0: once, at the start)",
    )
    theory_batch_size: int = Field(
        25, ge=1, description="theory step size: tasks of the batch that re-estimates E‖∇f‖ each iteration"
    )
    stationarity_every: int = Field(
        0, ge=0, description="log ‖∇F(w)‖ on a fixed task batch every N iterations (0: off)"
    )
    stationarity_tasks: int = Field(1000, ge=2, description="tasks of the stationarity monitor's fixed batch")
    stop_at_epsilon: float | None = Field(
        None, gt=0, description="stop once the monitored ‖∇F(w)‖ is at most this (needs stationarity_every)"
    )
    multi_step_loss_iterations: int = Field(
        0, ge=0, description="MAML++ multi-step loss, annealed to the last step over this many iterations (0: off)"
    )
    first_order_iterations: int = Field(
        0, ge=0, description="MAML++ derivative-order annealing: first order for this many iterations (0: off)"
    )
    strategy: str = Field("auto", description="how the tasks of a batch run: auto, vmap, chunked or loop")
    chunk_size: int | None = Field(None, ge=1, description="tasks per vmap call under strategy chunked")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the meta-gradient: true, false or auto (from the 6000th meta-gradient on; MLPs)",
    )
    # Bayesian MAML
    particles: int = Field(
        0,
        ge=0,
        description="Bayesian MAML and the ensemble of MAMLs: particles M of the model, meta-learned together "
        "(0: one model, plain MAML; docs/bayesian.md)",
    )
    inner_update: Literal["gradient", "svgd"] = Field(
        "gradient",
        description="the inner steps: gradient descent (MAML, an ensemble of MAMLs) or Stein variational gradient "
        "descent over the particles (Bayesian MAML; needs particles >= 1)",
    )
    prior_std: float | None = Field(
        1.0,
        gt=0,
        description="svgd: standard deviation of the Gaussian prior on every particle coordinate (unset: flat)",
    )
    noise_std: float | None = Field(
        None,
        gt=0,
        description="particles, regression: the Gaussian noise of the likelihood (unset: learned per particle)",
    )
    noise_init_std: float = Field(
        1.0,
        gt=0,
        description="particles, regression, learned noise (noise_std unset): the noise every particle starts from "
        "before meta-training",
    )
    # task family
    phase_range: list[float] = Field(
        default_factory=lambda: [0.0, math.pi],
        min_length=2,
        max_length=2,
        description="sinusoid: the phase range of y = A sin(ωx - φ) (Bayesian MAML's setting: [0, 2π])",
    )
    frequency_range: list[float] = Field(
        default_factory=lambda: [1.0, 1.0],
        min_length=2,
        max_length=2,
        description="sinusoid: the frequency range of ω (Bayesian MAML's setting: [0.5, 2])",
    )
    noise_fraction: float = Field(
        0.0, ge=0, description="sinusoid: observation noise N(0, (noise_fraction A)²) (Bayesian MAML's setting: 0.01)"
    )
    support_size: int = Field(10, ge=1, description="sinusoid: support (training) points per task")
    query_size: int = Field(10, ge=1, description="sinusoid: query points per task")
    hidden: list[int] = Field(
        default_factory=lambda: [40, 40], min_length=1, description="sinusoid: hidden layer widths of the MLP"
    )
    # few-shot classification (benchmark "omniglot" or "folder")
    data_dir: str = Field(
        "data/omniglot", description="omniglot/folder/text_folder: where the images or texts (a folder or a CSV) are"
    )
    download: bool = Field(
        False, description="omniglot: fetch the official zips into data_dir when missing (checked against their md5)"
    )
    cache_dir: str | None = Field(
        None,
        description="omniglot/folder/text: where the decoded-data cache goes (unset: data_dir, or a cache folder in "
        "it; languages: ~/.cache/torchmaml)",
    )
    split: Literal["maml", "vinyals"] = Field(
        "maml", description="omniglot: the class split, maml (Finn et al.) or vinyals (Vinyals et al.)"
    )
    color: Literal["L", "RGB"] = Field("L", description="folder: L (grayscale) or RGB")
    class_fractions: list[float] = Field(
        default_factory=lambda: [0.7, 0.1, 0.2],
        min_length=3,
        max_length=3,
        description="folder/text: shares of the classes for training, validation and test (disjoint; a seeded shuffle)",
    )
    split_seed: int = Field(0, ge=0, description="folder/text: the seed of the class shuffle behind class_fractions")
    ways: int = Field(5, ge=2, description="classification: classes per task (N-way)")
    shots: int = Field(1, ge=1, description="classification: support examples per class (K-shot)")
    queries: int = Field(15, ge=1, description="classification: query examples per class")
    image_size: int = Field(
        28, ge=8, le=512, description="classification: images are resized to image_size × image_size"
    )
    filters: int = Field(64, ge=1, description="classification: filters of each conv4 layer")
    strided: bool = Field(False, description="classification: conv4 with stride-2 convolutions instead of max-pooling")
    batch_norm: Literal["transductive", "per_step"] = Field(
        "transductive", description="classification: transductive batch norm, or MAML++ per-step weights (per_step)"
    )
    # few-shot text classification (benchmark "languages" or "text_folder")
    language_group: Literal["all", "latin"] = Field(
        "all", description="languages: the classes, all 42 languages or the 27 written in the Latin alphabet"
    )
    words_per_class: int = Field(
        300, ge=2, le=5000, description="languages: words per language (its most frequent unambiguous ones)"
    )
    max_length: int = Field(
        16, ge=1, le=512, description="text: tokens (UTF-8 bytes) per text; longer texts are cut, shorter padded"
    )
    text_model: Literal["gru", "transformer"] = Field(
        "gru", description="text: the network, a GRU or a Transformer encoder over byte tokens"
    )
    text_embedding: int = Field(32, ge=1, description="text: token embedding width (the Transformer's width)")
    text_hidden: int = Field(
        64, ge=1, description="text: the GRU's state size, or the Transformer's feed-forward width"
    )
    text_heads: int = Field(2, ge=1, description="text: attention heads of the Transformer (divide text_embedding)")
    text_layers: int = Field(1, ge=1, le=12, description="text: Transformer encoder layers")
    validate_every: int = Field(
        0, ge=0, description="validate every N iterations on val_tasks tasks and keep the best weights (0: off)"
    )
    val_tasks: int = Field(100, ge=2, description="tasks of each validation")
    # pretrained baseline (joint training on all tasks, then fine-tuning)
    pretrained_baseline: bool = Field(
        False, description="sinusoid: also train the 'pretrained on all tasks' baseline (formerly `baseline`)"
    )
    pretrained_iterations: int = Field(
        70_000, ge=1, description="iterations of the pretrained baseline (unset: as many as iterations)"
    )
    pretrained_lr_grid: list[float] = Field(
        default_factory=lambda: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],
        description="fine-tuning step sizes tried for the pretrained baseline on validation tasks",
    )
    # evaluation on held-out tasks
    eval_tasks: int = Field(600, ge=2, description="held-out tasks of the meta-test")
    eval_support_sizes: list[int] = Field(
        default_factory=lambda: [5, 10], min_length=1, description="sinusoid: support sizes K of the meta-test"
    )
    eval_query_size: int = Field(100, ge=1, description="sinusoid: query points per meta-test task")
    eval_steps: list[int] = Field(
        default_factory=lambda: [1, 5, 10], min_length=1, description="inner steps after which the meta-test measures"
    )
    eval_seed: int = Field(2017, ge=0, description="seed of the meta-test tasks")
    # bookkeeping and reliability
    seed: int = Field(0, ge=0, description="seed of the initial weights and the task sampler")
    log_every: int = Field(100, ge=1, description="log loss_before and TensorBoard scalars every N iterations")
    checkpoint_every: int = Field(1000, ge=1, description="checkpoint every N iterations")
    keep_checkpoints: int = Field(3, ge=1, description="periodic checkpoints kept (the newest)")
    max_consecutive_skips: int = Field(20, ge=1, description="stop after this many non-finite steps in a row")
    dtype: Literal["float32", "float64"] = Field("float32", description="float32 or float64")
    device: str = Field("cpu", description="cpu, cuda, cuda:N, or mps where torch has it")
    threads: int | None = Field(None, ge=1, description="torch threads (unset: torch's default)")

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, value: str) -> str:
        try:
            estimator_class(value)
        except ConfigError as error:
            raise ValueError(str(error).removeprefix("estimator: ")) from None
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; choose one of {', '.join(STRATEGIES)}")
        return value

    @field_validator("hidden", "eval_support_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"every entry must be >= 1, got {value}")
        return value

    @field_validator("eval_steps")
    @classmethod
    def _eval_steps(cls, value: list[int]) -> list[int]:
        if any(v < 0 or v > 1000 for v in value):
            raise ValueError(f"every entry must be between 0 and 1000, got {value}")
        return sorted(set(value))

    @field_validator("class_fractions")
    @classmethod
    def _class_fractions(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value) or value[0] <= 0 or value[2] <= 0:
            raise ValueError(f"train, validation and test shares: train and test > 0, none negative, got {value}")
        return value

    @field_validator("pretrained_lr_grid")
    @classmethod
    def _positive_rates(cls, value: list[float]) -> list[float]:
        if not value or any(not v > 0 for v in value):
            raise ValueError(f"needs at least one rate and every rate must be > 0, got {value}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("mps", "mps:0"):
            import torch

            if not torch.backends.mps.is_available():
                raise ValueError("'mps' (Apple GPU) is not available in this torch build or on this machine; use 'cpu'")
            return value
        if value != "cpu" and not value.startswith("cuda"):
            raise ValueError("must be 'cpu', 'cuda' or 'cuda:N' (or 'mps' on Apple silicon)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sections_and_baseline(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        try:
            values = flat_values(values)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        # an unset pretrained_iterations is the run's iterations, so a short run is short in both phases
        if values.get("pretrained_iterations") is None and "iterations" in values:
            values = {**values, "pretrained_iterations": values["iterations"]}
        return values

    @model_validator(mode="after")
    def _estimator_options(self) -> TrainConfig:
        try:
            get_estimator(self.estimator, self.estimator_options)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def _hessian_set(self) -> TrainConfig:
        uses = estimator_class(self.estimator).hessian_set
        if uses == "required" and self.hessian_size == 0:
            raise ValueError(
                f"estimator {self.estimator!r} takes the Hessian on an independent set D_h: set hessian_size "
                "(examples per task, e.g. 10), or use estimator 'unrolled'"
            )
        if uses == "unused" and self.hessian_size > 0:
            raise ValueError(
                f"hessian_size: estimator {self.estimator!r} takes no Hessian set; set hessian_size = 0 or use "
                f"estimator {one_of([name for name, cls in ESTIMATORS.items() if cls.hessian_set != 'unused'])}"
            )
        return self

    @model_validator(mode="after")
    def _alpha_maml(self) -> TrainConfig:
        if self.outer_optimizer == "alpha_maml":
            if self.inner_lr_mode != "scalar":
                raise ValueError("outer_optimizer 'alpha_maml' tunes one inner rate: set inner_lr_mode = \"scalar\"")
            if self.outer_lr_schedule != "constant":
                raise ValueError(
                    "outer_optimizer 'alpha_maml' sets the outer rate itself: use outer_lr_schedule constant"
                )
        return self

    @model_validator(mode="after")
    def _theory(self) -> TrainConfig:
        published = estimator_class(self.estimator).theory_step_constant is not None
        if self.outer_optimizer == "theory" and self.theory_c is None and not published:
            raise ValueError(
                f"outer_optimizer 'theory' has no published constant c for estimator {self.estimator!r}: "
                f"set theory_c (published: {', '.join(estimators_with('theory_step_constant'))})"
            )
        if self.stop_at_epsilon is not None and self.stationarity_every == 0:
            raise ValueError("stop_at_epsilon needs the stationarity monitor: set stationarity_every (e.g. 500)")
        return self

    @field_validator("benchmark")
    @classmethod
    def _known_benchmark(cls, value: str) -> str:
        from torchmaml.benchmark import benchmark_named  # the data and models load only when a config is checked

        try:
            benchmark_named(value)
        except ConfigError as error:
            raise ValueError(str(error).removeprefix("benchmark: ")) from None
        return value

    @model_validator(mode="after")
    def _benchmark_accepts(self) -> TrainConfig:
        from torchmaml.benchmark import benchmark_named

        benchmark_named(self.benchmark).check(self)
        return self

    @model_validator(mode="after")
    def _multi_step_loss(self) -> TrainConfig:
        if self.multi_step_loss_iterations and not estimator_class(self.estimator).supports_step_weights:
            raise ValueError(
                f"multi_step_loss_iterations: the multi-step loss needs the inner trajectory's query losses, "
                f"which estimator {self.estimator!r} does not differentiate; set it to 0"
            )
        return self

    @model_validator(mode="after")
    def _learned_rates(self) -> TrainConfig:
        if self.inner_lr_mode != "fixed" and not estimator_class(self.estimator).differentiates_inner_loop:
            raise ValueError(
                f"inner_lr_mode {self.inner_lr_mode!r}: estimator {self.estimator!r} does not differentiate the inner "
                "steps, so learned rates would get no gradient; use inner_lr_mode 'fixed' or estimator "
                f"{one_of(estimators_with('differentiates_inner_loop'))}"
            )
        if self.inner_lr_mode == "per_layer_per_step" and max(self.eval_steps) > self.inner_steps:
            raise ValueError(
                f"eval_steps: inner_lr_mode 'per_layer_per_step' learns a rate for each of the {self.inner_steps} "
                f"inner steps, so evaluation cannot take {max(self.eval_steps)}; set eval_steps to steps <= "
                f"{self.inner_steps}, e.g. eval_steps = [{self.inner_steps}]"
            )
        return self

    @model_validator(mode="after")
    def _per_step_batch_norm(self) -> TrainConfig:
        if self.batch_norm == "per_step" and not estimator_class(self.estimator).supports_per_step_layers:
            raise ValueError(
                f"batch_norm 'per_step' steps through the inner loop with estimator "
                f"{one_of(estimators_with('supports_per_step_layers'))}, not {self.estimator!r}"
            )
        return self

    @model_validator(mode="after")
    def _workable_values(self) -> TrainConfig:
        check_values(self.model_dump())
        return self

    @model_validator(mode="after")
    def _attention_heads(self) -> TrainConfig:
        if self.text_model == "transformer" and self.text_embedding % self.text_heads:
            raise ValueError(
                f"text_heads: {self.text_heads} attention heads must divide text_embedding = {self.text_embedding}"
            )
        return self

    @model_validator(mode="after")
    def _particles(self) -> TrainConfig:
        ensemble_only = ("chaser", "bfa")
        if self.particles == 0:
            if self.inner_update == "svgd":
                raise ValueError("inner_update 'svgd' moves a particle ensemble: set particles (e.g. 5)")
            if self.estimator in ensemble_only:
                raise ValueError(
                    f"estimator {self.estimator!r} meta-learns a particle ensemble: set particles (e.g. 5)"
                )
            return self
        if self.inner_update == "svgd" and not estimator_class(self.estimator).supports_inner_update:
            raise ValueError(
                f"inner_update 'svgd': estimator {self.estimator!r} assumes gradient inner steps; use estimator "
                f"{one_of(estimators_with('supports_inner_update'))}"
            )
        if self.pretrained_baseline:
            raise ValueError("particles: the pretrained baseline is a single network; set pretrained_baseline = false")
        if self.batch_norm == "per_step":
            raise ValueError(
                "particles: per-step batch norm is not available for particles; use batch_norm 'transductive'"
            )
        return self

    @model_validator(mode="after")
    def _sinusoid_ranges(self) -> TrainConfig:
        for name in ("phase_range", "frequency_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: [low, high] with low <= high, got [{low}, {high}]")
        return self

    @model_validator(mode="after")
    def _chunking(self) -> TrainConfig:
        if self.strategy == "chunked" and self.chunk_size is None:
            raise ValueError("strategy 'chunked' needs chunk_size (e.g. --set chunk_size=8)")
        return self


def check_machine(device: str, threads: int | None) -> None:
    """Refuse a device this machine lacks (``cuda`` without CUDA, ``cuda:abc``) and more threads than CPUs
    (``ConfigError``). Checked where a run computes (a new run, a resumed one), not where a saved run is read."""
    try:
        _check_machine(device, threads)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_machine(device: str, threads: int | None) -> None:
    match = re.fullmatch(r"cpu|mps(?::0)?|cuda(?::(\d+))?", device)
    if match is None:
        raise ValueError(f"device: must be 'cpu', 'cuda' or 'cuda:N' (or 'mps' on Apple silicon), got {device!r}")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(match.group(1) or 0) >= count:
            raise ValueError(
                f'device: {device!r} is not available on this machine ({count} CUDA devices); set device = "cpu"'
            )
    cpus = os.cpu_count() or 1
    if threads is not None and threads > cpus:
        raise ValueError(f"threads: this machine has {cpus} CPUs, got {threads}; leave it unset or lower it")


def build_config(values: dict[str, Any]) -> TrainConfig:
    """Validate ``values``; the first problem becomes a one-line ``ConfigError``."""
    return build(TrainConfig, values)


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A preset or TOML file (its ``base`` chain resolved) with ``key=value`` overrides applied, validated."""
    _, values = load_values(name_or_path, overrides, presets=preset_names())
    config = build_config(values)
    check_machine(config.device, config.threads)
    return config


def to_toml(config: BaseModel) -> str:
    """The resolved configuration as TOML text, a ``TrainConfig`` in its sections (``None`` values are left
    out, as TOML has no null)."""
    return config_toml(config, sectioned_values if isinstance(config, TrainConfig) else None)


__all__ = [
    "ConfigError",
    "TrainConfig",
    "build_config",
    "check_machine",
    "check_values",
    "describe_validation_error",
    "flat_values",
    "load_config",
    "parse_override",
    "preset_names",
    "read_toml",
    "sectioned_values",
    "to_toml",
    "tomllib",
]
