"""The layout of a run folder, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchmaml.checkpoint import CheckpointStore
from torchmaml.config import TrainConfig, build_config, read_toml
from torchmaml.errors import ConfigError


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run folder. ``kind`` is ``maml`` or ``pretrained`` (the baseline)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

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

    def load_config(self) -> TrainConfig:
        """The resolved configuration saved by ``train``; a clear error if this is not a run folder."""
        if not self.config.exists():
            raise ConfigError(f"{self.root} is not a run folder (no config.toml); train one with `torchmaml train`")
        return build_config(read_toml(self.config))
