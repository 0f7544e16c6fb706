"""torchmaml: gradient-based meta-learning (MAML and its family) for any PyTorch ``nn.Module``."""

from torchmaml.errors import ConfigError, ModelError, TaskBatchError, TorchMAMLError
from torchmaml.inner import adapt
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch, TaskSource

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "MetaLearner",
    "ModelError",
    "TaskBatch",
    "TaskBatchError",
    "TaskSource",
    "TorchMAMLError",
    "__version__",
    "adapt",
]
