"""The layout of a run folder, in one place (both species: supervised and meta-RL)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torchmaml.checkpoint import RESUMABLE_KEYS, CheckpointStore
from torchmaml.config import TrainConfig, build_config, check_machine
from torchmaml.errors import ConfigError
from torchmaml.run.config_io import read_toml
from torchmaml.species import RECORD_NAME

EXTENSIBLE_KEYS = RESUMABLE_KEYS  # what --resume may --set: the keys outside the config digest


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run folder. ``kind`` is ``maml`` or ``pretrained`` (the baseline)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def record(self) -> Path:
        """``run.toml``: the run's species and the torchmaml version that created it (``torchmaml.species``)."""
        return self.root / RECORD_NAME

    def metrics(self, kind: str) -> Path:
        return self.root / f"metrics-{kind}.jsonl"

    def checkpoint(self, kind: str) -> Path:
        return self.root / f"checkpoint-{kind}.pt"

    def best_checkpoint(self, kind: str) -> Path:
        """The best-on-validation weights of phase ``kind`` (kept when ``validate_every`` is set)."""
        return self.root / f"checkpoint-{kind}-best.pt"

    def checkpoints(self, kind: str, keep: int) -> CheckpointStore:
        """The periodic checkpoints of phase ``kind``, the newest ``keep`` kept."""
        return CheckpointStore(self.root / "checkpoints", kind, keep)

    def tensorboard(self, kind: str) -> Path:
        return self.root / "tensorboard" / kind

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def learning_curve(self) -> Path:
        return self.root / "learning_curve.png"

    @property
    def fits(self) -> Path:
        return self.root / "adaptation.png"

    @property
    def posterior_predictive(self) -> Path:
        return self.root / "posterior_predictive.png"

    @property
    def reliability(self) -> Path:
        return self.root / "reliability.png"

    def load_config(self) -> TrainConfig:
        """The resolved supervised configuration saved by ``train``; a clear error if this is not a run folder.
        It is read as saved, whatever machine it was trained on (see :meth:`config_for_this_machine`)."""
        if not self.config.exists():
            raise ConfigError(f"{self.root} is not a run folder (no config.toml); train one with `torchmaml train`")
        return build_config(read_toml(self.config))

    def config_for_this_machine(self) -> TrainConfig:
        """The saved configuration, to evaluate or use the run here: a device this machine lacks becomes
        ``cpu`` and a thread count above its CPUs the default, each with a one-line note on stderr."""
        config = self.load_config()
        try:
            check_machine(config.device, None)
        except ConfigError as error:
            print(f"torchmaml: note: {error}; using cpu", file=sys.stderr)
            config = config.model_copy(update={"device": "cpu"})
        try:
            check_machine("cpu", config.threads)
        except ConfigError as error:
            print(f"torchmaml: note: {error}; using the default", file=sys.stderr)
            config = config.model_copy(update={"threads": None})
        return config


def resume_config(root: Path, overrides: list[str]) -> TrainConfig:
    """The run's saved configuration with ``--set`` overrides of ``EXTENSIBLE_KEYS`` only (extending a run)."""
    from torchmaml.run.resume import extended

    config = RunDir(Path(root)).load_config()
    check_machine(config.device, config.threads)
    if overrides and config.outer_lr_schedule == "cosine":
        raise ConfigError(
            "--set: a run with outer_lr_schedule cosine cannot be extended (its schedule was fitted to its "
            "iterations); train a new run"
        )
    return build_config(extended(config.model_dump(), overrides, EXTENSIBLE_KEYS))
