"""Task sources: benchmarks that draw ``TaskBatch`` es."""

from torchmaml.data.sinusoid import SinusoidTasks

__all__ = ["SinusoidTasks"]
