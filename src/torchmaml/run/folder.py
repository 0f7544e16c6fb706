"""The folder of a new run: never trained over by accident, replaced only as a whole.

``train --out RUN`` into a folder that holds a run already is refused (``--resume`` continues it,
``--overwrite`` replaces it); a folder that holds anything else is refused always (torchmaml never deletes
what is not a run). Replacing renames the old run aside first, under its lock, and then deletes it, so the
new run never shares its folder with pieces of the old one.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

from torchmaml.errors import ConfigError
from torchmaml.run.files import WriteError, describe, ensure_folder
from torchmaml.runlock import LOCK_NAME, exclusive_run

RUN_MARKER = "config.toml"


def check_new_run_folder(root: Path, overwrite: bool) -> bool:
    """Whether ``root`` holds a run to replace; a ``ConfigError`` if a new run cannot go there. Writes nothing."""
    root = Path(root)
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode) and root.is_dir():
        mode = os.stat(root).st_mode  # a link the user made to a folder of their own is fine
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"--out {root} is {describe(mode)}; give a new or empty folder")
    entries = [entry for entry in os.listdir(root) if entry != LOCK_NAME]
    if not entries:
        return False
    if RUN_MARKER not in entries:
        raise ConfigError(f"--out {root} is a folder that is neither empty nor a run folder; give a new folder")
    if not overwrite:
        raise ConfigError(
            f"--out {root} holds a run already: continue it with `torchmaml train --resume {root}`, or pass "
            "--overwrite to delete it and train a new one there"
        )
    return True


def replace_run(root: Path) -> None:
    """Delete the run in ``root`` completely: renamed aside under its lock (refused if it is training), then
    removed; ``root`` is left as an empty folder."""
    root = Path(os.path.realpath(root))  # the folder itself, also where --out is a link the user made to it
    if not root.name:
        raise ConfigError(f"--out {root}: cannot replace a run at the file system's root; give a folder below it")
    aside = root.with_name(f".{root.name}.replaced-{os.getpid()}")
    with exclusive_run(root):
        try:
            os.rename(root, aside)
        except OSError as error:
            raise WriteError(f"cannot replace the run {root}: {error.strerror or error}; nothing was deleted") from None
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        print(f"torchmaml: warning: could not delete all of the replaced run, now at {aside}", file=sys.stderr)
    ensure_folder(root)
