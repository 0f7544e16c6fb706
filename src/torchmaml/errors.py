"""Typed exceptions: every user-facing failure names the problem and what to do about it."""


class TorchMAMLError(ValueError):
    """Base class of torchmaml's user-facing errors (a ``ValueError``, so plain ``except`` works)."""


class ConfigError(TorchMAMLError):
    """A configuration key is unknown, of the wrong type, or out of range."""


class TaskBatchError(TorchMAMLError):
    """A ``TaskBatch`` is malformed: wrong rank, mismatched task or example counts, mixed devices."""


class ModelError(TorchMAMLError):
    """The model cannot be meta-trained as given (its output does not fit the loss, unsupported layer, ...)."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when the message is empty), for short reports."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def one_of(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``: the choices an error message offers."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
