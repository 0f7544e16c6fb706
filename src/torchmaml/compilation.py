"""When the meta-gradient runs through ``torch.compile``.

``compile=True`` compiles from the first call and ``False`` never does. ``"auto"`` (the default) follows the
ski-rental rule with a count fixed in advance: run eagerly, and compile from call ``COMPILE_AFTER_CALLS`` on,
about as many eager meta-gradients as take one compilation's time (measurements: ``benchmarks/README.md``); an
estimator whose eager call is much costlier declares its own count (``Estimator.auto_compile_after``).
A short job never pays for a compilation it cannot earn back; a long one
pays at most about twice the compilation time. The switch never depends on the clock or the machine's load
(compiled and eager kernels round differently, so a time-based switch made identical runs differ): results
are a function of the configuration and seed. The trainer saves :attr:`MetaGradientRunner.calls` in its
checkpoints and restores it on resume, so a resumed run switches at the same call as an uninterrupted one.

``"auto"`` compiles the vectorised strategies only (``vmap``, ``chunked``: models without convolutions).
Under ``loop`` (conv nets) a compiled conv4 meta-gradient (one task's meta-gradient compiled, the same graph
for every task) agreed with eager execution to round-off but was barely faster at second order and slower at
first order, after a long compilation, so ``"auto"`` leaves the loop eager; ``True`` compiles it.

Compilation needs a C++ compiler; where it fails (any ``torch._dynamo`` error: no compiler, or a model torch
cannot trace yet, such as dropout under ``vmap``) the learner warns once and continues eagerly.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from torchmaml.errors import ConfigError, first_line
from torchmaml.execution import apply_task_gradient, mean_task_gradient

# eager meta-gradients before "auto" compiles: about the time of one cold compilation of the sinusoid MLP's
# meta-gradient, in eager meta-gradients of that model (benchmarks/README.md)
COMPILE_AFTER_CALLS = {"vmap": 6000, "chunked": 6000}
COMPILING_NOTICE = "torchmaml: compiling the meta-gradient with torch.compile (first compiled iteration only)"
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

    def __init__(
        self,
        mode: CompileMode,
        strategy: str,
        notify: Callable[[str], None] | None = None,
        calls: int = 0,
        *,
        auto_after: int | None = None,
    ) -> None:
        self.mode = check_compile_mode(mode)
        self.strategy = strategy
        self.auto_after = auto_after  # the estimator's own "auto" count (Estimator.auto_compile_after), if any
        self.notify = notify if notify is not None else _print_notice
        self.calls = calls  # calls so far (eager and compiled): the trainer saves and restores it
        self._compiled: Callable[..., Any] | None = None
        self._announced = False

    @property
    def compile_after(self) -> float:
        """The number of calls after which the runner compiles: 0, never (``inf``) or the ``"auto"`` count."""
        if self.mode is True:
            return 0
        if self.mode != "auto" or self.strategy not in COMPILE_AFTER_CALLS:
            return math.inf
        return COMPILE_AFTER_CALLS[self.strategy] if self.auto_after is None else self.auto_after

    @property
    def compiled(self) -> bool:
        """Whether the next call runs compiled."""
        return self.calls >= self.compile_after

    def __call__(self, *arguments: Any) -> Any:
        self.calls += 1
        if self.calls > self.compile_after:
            if self._compiled is None:
                self._compiled = self._compile()
            if not self._announced:
                self._announced = True
                self.notify(COMPILING_NOTICE)
            try:
                return self._compiled(*arguments)
            except Exception as error:
                from torch._dynamo.exc import TorchDynamoException

                if not isinstance(error, TorchDynamoException):  # not compilation's own failure: the user's
                    raise
                warnings.warn(f"torch.compile failed ({first_line(error)}); continuing without it", stacklevel=3)
                self._compiled, self.mode = None, False
        return mean_task_gradient(*arguments)

    def _compile(self) -> Callable[..., Any]:
        if self.strategy != "loop":
            return torch.compile(mean_task_gradient)
        per_task = torch.compile(apply_task_gradient)
        return lambda *arguments: mean_task_gradient(*arguments, per_task=per_task)


def _print_notice(message: str) -> None:
    """One line on stderr that does not break a tqdm progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
