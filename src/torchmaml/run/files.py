"""Files written and read without following symbolic links.

A run folder may come from someone else (downloaded, unpacked, shared), so any name in it may be a symbolic
link to a victim file or a device. Every write goes to a fresh temporary file created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` next to the destination, is fsynced, and is renamed over the destination
(``rename`` replaces a link itself, never its target). A destination that is a symbolic link or not a regular
file is refused with one line, except that ``devices=True`` (a user's ``--out``) writes straight through to a
character device such as ``/dev/null``. Reads open with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO never blocks),
accept regular files only and bound their size.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from torchmaml.errors import TorchMAMLError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMPORARY_SUFFIX = ".tmp"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafePathError(TorchMAMLError):
    """A path torchmaml would write or read is a symbolic link, a folder, a FIFO or a device."""


class WriteError(TorchMAMLError):
    """A file could not be written (read-only folder, full disk, file size limit); the old content is intact."""


def describe(mode: int) -> str:
    """What kind of file ``mode`` (``st_mode``) is, in words."""
    kinds = [
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ]
    return next((name for test, name in kinds if test(mode)), "a file of unknown kind")


def check_destination(path: Path, devices: bool = False) -> bool:
    """Refuse a destination that is a link or not a regular file; ``True`` if it is a device to write through."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as error:
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from None
    if devices and stat.S_ISCHR(mode):
        return True
    if not stat.S_ISREG(mode):
        raise UnsafePathError(
            f"{path} is {describe(mode)}, not a regular file; torchmaml writes regular files only and never "
            "follows links: remove it or choose another path"
        )
    return False


def write_atomic(path: Path, data: bytes, devices: bool = False) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the complete new content.

    A ``WriteError`` (nothing at ``path`` changed, no temporary left) if the write fails; an
    ``UnsafePathError`` if ``path`` is a link or not a regular file (a character device is written through
    when ``devices``).
    """
    path = Path(path)
    if check_destination(path, devices):
        _write_device(path, data)
        return
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o644)
    except OSError as error:
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {error.strerror or error}; it was left as it was") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _write_device(path: Path, data: bytes) -> None:
    try:
        handle = os.open(path, os.O_WRONLY | NOFOLLOW | CLOEXEC)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
    except OSError as error:
        raise WriteError(f"cannot write to the device {path}: {error.strerror or error}") from None


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_figure(figure: Figure, path: Path, dpi: int) -> Path:
    """``figure.savefig`` into ``path`` through :func:`write_atomic` (matplotlib would follow a link)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)


def read_regular(path: Path, limit: int, follow: bool = False) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes, and not a symbolic link
    unless ``follow`` (a user's own config file may be one; what it points to must still be a regular file).

    ``FileNotFoundError`` if it does not exist; an ``UnsafePathError`` naming the file otherwise.
    """
    path = Path(path)
    try:
        handle = os.open(path, os.O_RDONLY | (0 if follow else NOFOLLOW) | NONBLOCK | CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        mode = _lstat_mode(path)
        kind = describe(mode) if mode is not None else (error.strerror or str(error))
        raise UnsafePathError(f"cannot read {path}: it is {kind}; torchmaml reads regular files only") from None
    try:
        status = os.fstat(handle)
        if not stat.S_ISREG(status.st_mode):
            kind = describe(status.st_mode)
            raise UnsafePathError(f"cannot read {path}: it is {kind}; torchmaml reads regular files only")
        if status.st_size > limit:
            raise UnsafePathError(f"cannot read {path}: {status.st_size} bytes is more than the limit of {limit} bytes")
        with os.fdopen(os.dup(handle), "rb") as stream:
            return stream.read(limit + 1)[:limit]
    except OSError as error:
        raise UnsafePathError(f"cannot read {path}: {error.strerror or error}") from None
    finally:
        os.close(handle)


def _lstat_mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return None


def open_append(path: Path) -> TextIO:
    """``path`` opened for appending lines; created if missing, refused if it is a link or not a regular file."""
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | NONBLOCK | CLOEXEC, 0o644)
    except OSError as error:
        mode = _lstat_mode(path)
        if mode is not None and not stat.S_ISREG(mode):
            raise UnsafePathError(f"{path} is {describe(mode)}, not a regular file: remove it") from None
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from None
    mode = os.fstat(handle).st_mode
    if not stat.S_ISREG(mode):
        os.close(handle)
        raise UnsafePathError(f"{path} is {describe(mode)}, not a regular file: remove it")
    return os.fdopen(handle, "a", buffering=1)  # line-buffered: a line on disk per iteration


def ensure_folder(path: Path) -> Path:
    """Create the folder ``path`` if missing; refuse it if it is a link or not a folder (a run's subfolders)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass
    except OSError as error:
        raise WriteError(f"cannot create the folder {path}: {error.strerror or error}") from None
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        raise UnsafePathError(f"{path} is {describe(mode)}, not a folder; torchmaml never follows links: remove it")
    return path


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writes left in ``folder`` (``.<name>.<random>.tmp``)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
