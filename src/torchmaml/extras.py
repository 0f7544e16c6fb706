"""Optional parts of torchmaml (extras): imported on demand, with a one-line install hint when missing.

``pip install torchmaml`` runs every supervised command. The extras add: ``plots`` (matplotlib: the
learning curve and the sinusoid fits), ``tensorboard`` (TensorBoard event files), ``rl`` (gymnasium:
meta-reinforcement learning), ``mujoco`` (gymnasium's MuJoCo environments: half-cheetah) and ``text`` (wordfreq:
the word lists of the ``languages`` benchmark).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

from torchmaml.errors import TorchMAMLError

WHAT = {
    "plots": "Plots need matplotlib",
    "tensorboard": "TensorBoard logging needs tensorboard",
    "rl": "Meta-reinforcement learning needs gymnasium",
    "mujoco": "The half-cheetah environments need MuJoCo",
    "safetensors": "Exporting .safetensors needs safetensors (or export to a .pt file)",
    "text": "The languages benchmark needs wordfreq (or use benchmark text_folder with your own texts)",
}


class MissingExtraError(TorchMAMLError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def hint(extra: str) -> str:
    """One line naming what is missing and the ``pip install`` command that adds it."""
    return f'{WHAT[extra]}: pip install "torchmaml[{extra}]"'


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` with the install hint of ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(hint(extra)) from error


def available(module: str) -> bool:
    """Whether ``module`` is installed, without importing it (``sys.modules[name] = None`` blocks it, as in
    the tests)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_warned: set[str] = set()


def note_missing(extra: str) -> None:
    """Say once per process, on stderr, that an optional output is skipped and how to get it."""
    if extra not in _warned:
        _warned.add(extra)
        print(f"torchmaml: note: {hint(extra)}; skipped", file=sys.stderr)


class _NoWriter:
    """Stands in for TensorBoard's ``SummaryWriter`` when tensorboard is not installed."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def SummaryWriter(*args: Any, **kwargs: Any) -> Any:
    """TensorBoard's ``SummaryWriter`` if tensorboard is installed, else a writer that records nothing."""
    if not available("tensorboard"):
        note_missing("tensorboard")
        return _NoWriter()
    from torch.utils.tensorboard import SummaryWriter as writer

    return writer(*args, **kwargs)
