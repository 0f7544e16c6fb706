"""The species of torchmaml runs (``supervised``, ``rl``) and the module that implements each, imported lazily.

A species' module (``SPECIES``) offers the commands the command line dispatches to::

    load_config(name_or_path, overrides) -> config          # a preset or TOML file, validated
    resume_config(run_dir, overrides) -> config             # a run's saved config, extended by --set
    train(config, out, *, progress, resume, overwrite, team) -> Path   # team: torchmaml.run.team
    evaluate(run_dir, *, tasks) -> Evaluation               # what `torchmaml evaluate` prints and wrote

It is imported on first use only, so a supervised run never imports the meta-RL package (nor gymnasium).

A run records its species when it is created: ``RUN_DIR/run.toml`` holds ``species`` and the ``torchmaml``
version that created it (written atomically with ``torchmaml.run.files``). A config file states its species
with a ``species`` key, or inherits it through its ``base`` preset (``torchmaml.presets``). Run folders and
config files without a record (written before it existed) follow one rule, :func:`species_of_values`: a
configuration that names an ``env`` is meta-RL, any other is supervised.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torchmaml.errors import ConfigError

SPECIES = {"supervised": "torchmaml.commands", "rl": "torchmaml.rl.commands"}
CONFIGS = {"supervised": "torchmaml.config", "rl": "torchmaml.rl.config"}  # each has file_values(values)
RECORD_NAME = "run.toml"


@dataclass(frozen=True)
class Evaluation:
    """What ``torchmaml evaluate`` prints (``lines``), the files it wrote, and why results were not saved."""

    lines: list[str]
    written: list[str] = field(default_factory=list)
    not_written: str | None = None


def check_species(name: Any, source: Path | str) -> str:
    """``name`` if it is a known species, else a one-line ``ConfigError`` naming ``source``."""
    if name not in SPECIES:
        raise ConfigError(f"{source}: species must be one of {', '.join(map(repr, SPECIES))}, got {name!r}")
    return name


def species_of_values(values: dict[str, Any]) -> str:
    """The species of a configuration that does not state one: ``rl`` if it names an ``env``, else
    ``supervised`` (the rule for config files and run folders written before species were recorded)."""
    return "rl" if "env" in values else "supervised"


def file_values(species: str, values: dict[str, Any]) -> dict[str, Any]:
    """One config file's keys as ``species`` reads them (current key names; supervised: sections lifted), so
    that a ``base`` chain of files, old and new, merges key by key."""
    return importlib.import_module(CONFIGS[check_species(species, "species")]).file_values(values)


def module(species: str) -> ModuleType:
    """The module implementing ``species`` (imported now, on first use)."""
    return importlib.import_module(SPECIES[check_species(species, "species")])


def of_config(name_or_path: str | Path) -> str:
    """The species of a preset name or config file (its own ``species``, its base's, or the rule)."""
    from torchmaml.run.config_io import load_values

    return load_values(name_or_path)[0]


def of_run(root: Path) -> str:
    """The species a run folder recorded in ``run.toml``; a folder without the record follows the rule on its
    ``config.toml`` (a folder with neither is treated as supervised, whose commands say it is not a run)."""
    from torchmaml.run.config_io import read_toml

    root = Path(root)
    record = root / RECORD_NAME
    if record.exists():
        return check_species(read_toml(record).get("species"), record)
    config = root / "config.toml"
    return species_of_values(read_toml(config)) if config.exists() else "supervised"


def record(species: str) -> bytes:
    """The ``run.toml`` of a new run of ``species``."""
    import tomli_w

    from torchmaml import __version__

    return tomli_w.dumps({"species": check_species(species, "species"), "torchmaml": __version__}).encode()


__all__ = ["RECORD_NAME", "SPECIES", "Evaluation", "check_species", "module", "of_config", "of_run", "record"]
