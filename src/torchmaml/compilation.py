"""When the meta-gradient runs through ``torch.compile``.

``compile=True`` compiles from the first call and ``False`` never does. ``"auto"`` (the default) follows the
ski-rental rule: run eagerly, and compile once the time spent in eager meta-gradients reaches what one
compilation costs (``COMPILE_AFTER_SECONDS``). A short job never pays for a compilation it cannot earn back;
a long one pays at most about twice the compilation time, then runs compiled for the rest of the run
(W1: 4.7 -> 1.6 ms per meta-iteration, ``benchmarks/README.md``).

``"auto"`` compiles the vectorised strategies only (``vmap``, ``chunked``: models without convolutions).
Under ``loop`` (conv nets) a compiled conv4 meta-gradient (W2, one task's meta-gradient compiled, the same
graph for every task) agreed with eager execution to 5e-5 but was only 5-18% faster at second order and
10-20% slower at first order, after a compilation of 10-50 s with the cache warm, so ``"auto"`` leaves the
loop eager; ``True`` compiles it.

Compilation needs a C++ compiler; where it fails (``BackendCompilerFailed``) the learner warns once and
continues eagerly.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from torchmaml.errors import ConfigError, first_line
from torchmaml.execution import apply_task_gradient, mean_task_gradient

# seconds of eager meta-gradients before "auto" compiles: about one cold compilation of the sinusoid MLP's
# meta-gradient on this project's 2-core machine (36 s; 4-5 s with torch's compilation cache warm)
COMPILE_AFTER_SECONDS = {"vmap": 30.0, "chunked": 30.0}
CompileMode = bool | str


def check_compile_mode(mode: object) -> CompileMode:
    """``mode`` if it is ``True``, ``False`` or ``"auto"``; a ``ConfigError`` naming the choices otherwise."""
    if mode is True or mode is False or mode == "auto":
        return mode  # type: ignore[return-value]
    raise ConfigError(f"compile: must be true, false or 'auto', got {mode!r}")


class MetaGradientRunner:
    """Calls ``execution.mean_task_gradient`` eagerly or compiled, as ``mode`` says for ``strategy``.

    Compiled, the vectorised strategies run the whole call through ``torch.compile``; ``loop`` compiles one
    task's meta-gradient (``execution.apply_task_gradient``: the same graph for every task of the batch) and
    keeps the Python loop over tasks.
    """

    def __init__(self, mode: CompileMode, strategy: str) -> None:
        self.mode = check_compile_mode(mode)
        self.strategy = strategy
        self.eager_seconds = 0.0
        self._compiled: Callable[..., Any] | None = self._compile() if mode is True else None

    @property
    def compiled(self) -> bool:
        """Whether the next call runs compiled."""
        return self._compiled is not None

    def __call__(self, *arguments: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*arguments)
            except Exception as error:
                from torch._dynamo.exc import BackendCompilerFailed

                if not isinstance(error, BackendCompilerFailed):
                    raise
                warnings.warn(f"torch.compile failed ({first_line(error)}); continuing without it", stacklevel=3)
                self._compiled, self.mode = None, False
        start = time.perf_counter()
        result = mean_task_gradient(*arguments)
        self.eager_seconds += time.perf_counter() - start
        if self.mode == "auto" and self.eager_seconds >= COMPILE_AFTER_SECONDS.get(self.strategy, math.inf):
            self._compiled = self._compile()
        return result

    def _compile(self) -> Callable[..., Any]:
        if self.strategy != "loop":
            return torch.compile(mean_task_gradient)
        per_task = torch.compile(apply_task_gradient)
        return lambda *arguments: mean_task_gradient(*arguments, per_task=per_task)
