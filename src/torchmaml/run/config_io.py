"""Configuration files of every species: TOML presets with ``base`` inheritance, ``--set key=value``
overrides, validation against the species' pydantic schema, and the TOML a run folder saves.

    species, values = load_values("navigation2d", ["iterations=200"])   # a preset or a TOML path
    config = build(RLConfig, values)                                     # one ``ConfigError`` per problem

A file may start from another one with ``base = "NAME"`` (``torchmaml.presets``); ``species`` names the
species a file configures (``torchmaml.species``) and is inherited through ``base`` like any key. Neither
reaches the validated configuration. Every problem (unreadable file, unknown key, wrong type, value out of
range) is one ``ConfigError`` that names the file or the key.
"""

from __future__ import annotations

import math
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from torchmaml.errors import ConfigError
from torchmaml.run.files import UnsafePathError, read_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB
MAX_INTEGER = 2**63 - 1  # torch's seeds are 64-bit (a seed s is also used as 2s + 1 < 2**64)
Schema = TypeVar("Schema", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, with a one-line error naming the file on failure."""
    try:
        return tomllib.loads(read_regular(path, MAX_CONFIG_BYTES, follow=True).decode())
    except UnsafePathError as error:  # a folder, a FIFO, /dev/zero
        raise ConfigError(str(error)) from None
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as TOML (``3``, ``0.1``, ``true``, ``[1, 5]``) or else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set inner_lr=0.01")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_overrides(values: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``values`` with each ``key=value`` of ``overrides`` set (a new dict); ``section.key=value`` sets ``key``
    in the table ``section``."""
    values = dict(values)
    for text in overrides:
        key, value = parse_override(text)
        section, dot, name = key.partition(".")
        if not dot:
            values[key] = value
            continue
        table = values.get(section, {})
        if not isinstance(table, dict) or not name:
            raise ConfigError(f"--set {text!r}: {section!r} is not a section; use --set {name or section}=VALUE")
        values[section] = {**table, name: value}
    return values


def load_values(
    name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, presets: list[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """The species and keys of a preset name or TOML file (its ``base`` chain resolved), overrides applied.

    ``presets``: the preset names a bare name may be (unset: every species'); they are listed when
    ``name_or_path`` is neither a file nor one of them.
    """
    from torchmaml.presets import all_names, preset_path, read_preset

    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        found = preset_path(str(name_or_path))
        if found is None or (presets is not None and found.stem not in presets):
            names = ", ".join(presets) if presets is not None else all_names()
            raise ConfigError(f"--config {str(name_or_path)!r} is neither a file nor a preset; presets: {names}")
        path = found
    species, values = read_preset(path)
    return species, apply_overrides(values, overrides)


def build(schema: type[Schema], values: dict[str, Any]) -> Schema:
    """Validate ``values`` against ``schema``; the first problem becomes a one-line ``ConfigError``."""
    try:
        return schema(**values)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, schema)) from None


def to_toml(config: BaseModel, layout: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> str:
    """The resolved configuration as TOML text: its values as ``layout`` arranges them (a species' sections,
    leaving ``None`` out), else flat with ``None`` values left out (TOML has no null)."""
    values = config.model_dump()
    if layout is not None:
        return tomli_w.dumps(layout(values))
    return tomli_w.dumps({key: value for key, value in values.items() if value is not None})


def describe_validation_error(error: ValidationError, schema: type[BaseModel]) -> str:
    """The first problem of ``error`` as one line naming the key (and, for an unknown key, the known ones)."""
    problem = error.errors()[0]
    key = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        known = ", ".join(schema.model_fields)
        return f"{key}: unknown key; known keys: {known}"
    message = problem["msg"].removeprefix("Value error, ")
    given = problem.get("input")
    if problem["type"] != "missing" and not isinstance(given, dict):
        message += f" (got {given!r})"
    return f"{key}: {message}" if key else message


def check_values(values: dict[str, Any], prefix: str = "") -> None:
    """Refuse values that cannot work: a string with control characters (a newline in ``data_dir``), a
    number that is not finite (``outer_lr = inf``), an integer beyond 64 bits (``seed = 2**70``)."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for index, item in items:
            check_values({index: item}, f"{name}.")
        if isinstance(value, str) and any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError(f"{name}: control characters (newline, tab, ...) are not allowed, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            raise ValueError(f"{name}: must be below 2**63, got {value}")


__all__ = [
    "apply_overrides",
    "build",
    "check_values",
    "describe_validation_error",
    "load_values",
    "parse_override",
    "read_toml",
    "to_toml",
    "tomllib",
]
