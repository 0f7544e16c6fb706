"""torchmaml: gradient-based meta-learning (MAML and its family) for any PyTorch ``nn.Module``."""

from torchmaml.errors import ConfigError, ModelError, TaskBatchError, TorchMAMLError
from torchmaml.inner import inner_trajectory
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch, TaskSource

__version__ = "0.1.0"


def __getattr__(name: str):
    # load_run and export_run live in torchmaml.load, imported on first use
    if name in ("load_run", "export_run"):
        from torchmaml import load

        return getattr(load, name)
    raise AttributeError(f"module 'torchmaml' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "MetaLearner",
    "ModelError",
    "TaskBatch",
    "TaskBatchError",
    "TaskSource",
    "TorchMAMLError",
    "__version__",
    "inner_trajectory",
]
