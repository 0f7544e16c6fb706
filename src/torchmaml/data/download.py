"""Verified downloads and zip archives that are checked before anything in them is used.

``download`` streams a URL into a hidden temporary file next to the destination, checks its length and
md5, and only then renames it into place: an interrupted, truncated or corrupt download is deleted and
reported, so the destination either does not exist or holds the complete, verified file.

``checked_zip_members`` refuses an archive with an entry that could land outside the folder it belongs
to (an absolute path, a drive letter, a ``..`` component), that is a symbolic link, or whose declared size
is above a cap (checked before anything is inflated: a small entry can inflate to gigabytes). torchmaml reads
images straight out of verified archives and never unpacks them, but an archive with such an entry is
malformed and refused as a whole. Only the standard library is used for HTTP (``urllib``, with a timeout).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from torchmaml.errors import TorchMAMLError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class DownloadError(TorchMAMLError):
    """A download failed, was cut short, or did not match its checksum; nothing was left behind."""


class UnsafeArchiveError(TorchMAMLError):
    """A zip archive holds an entry that could escape its folder (absolute, ``..``) or a symbolic link."""


def download(url: str, destination: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``destination``, verified by ``md5`` (hex) when given; returns ``destination``.

    ``timeout`` (seconds) bounds every blocking network operation. On any failure a ``DownloadError``
    names the URL and the reason, and neither ``destination`` nor a temporary file is left on disk.
    """
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    except OSError as error:
        raise DownloadError(f"cannot download {url} into {destination.parent}: {error.strerror or error}") from None
    logger.info("downloading %s to %s", url, destination)
    try:
        with os.fdopen(handle, "wb") as stream:
            digest, size, expected_size = _fetch(url, stream, timeout)
            stream.flush()
            os.fsync(stream.fileno())
        if expected_size is not None and size != expected_size:
            raise DownloadError(f"download of {url} was cut short: got {size} of {expected_size} bytes")
        if md5 is not None and digest != md5.lower():
            raise DownloadError(
                f"download of {url} is corrupt: md5 {digest}, expected {md5} ({size} bytes); it was deleted"
            )
        os.chmod(temporary, 0o644)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return destination


def _fetch(url: str, stream, timeout: float) -> tuple[str, int, int | None]:
    """Copy the body of ``url`` into ``stream``: ``(md5 hex, bytes received, Content-Length or None)``."""
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK_BYTES):
                md5.update(chunk)
                stream.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"could not download {url}: {error.reason}") from None
    except (HTTPException, OSError) as error:  # IncompleteRead, reset connection, timeout, full disk
        raise DownloadError(f"could not download {url}: {type(error).__name__}: {error}") from None
    return md5.hexdigest(), size, int(length) if length and length.isdigit() else None


def checked_zip_members(archive: zipfile.ZipFile, max_member_bytes: int | None = None) -> list[zipfile.ZipInfo]:
    """The entries of ``archive`` (folders included), after refusing any unsafe one.

    Raises ``UnsafeArchiveError`` naming the archive and the first entry that is absolute, has a drive
    letter or a ``..`` component (``/`` and ``\\`` both count as separators), is a symbolic link, or
    declares more than ``max_member_bytes`` uncompressed bytes.
    """
    members = archive.infolist()
    for info in members:
        if max_member_bytes is not None and info.file_size > max_member_bytes:
            raise UnsafeArchiveError(
                f"archive {archive.filename} holds the entry {info.filename!r} of {info.file_size} bytes, more than "
                f"the {max_member_bytes} allowed; refusing the whole archive"
            )
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\0" in name:
            raise UnsafeArchiveError(
                f"archive {archive.filename} holds the entry {info.filename!r}, which would land outside its "
                "folder; refusing the whole archive"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(
                f"archive {archive.filename} holds the symbolic link {info.filename!r}; refusing the whole archive"
            )
    return members
