"""Presets: the TOML configurations shipped with torchmaml, for ``--config NAME`` and ``torchmaml presets``.

A preset (or any config file) may start from another one with ``base = "NAME"`` (a preset name or a path,
relative to the file): the base's keys are read first, then the file's own keys replace them. ``description``
is a one-line summary shown by ``torchmaml presets``; ``species`` names what the file configures
(``torchmaml.species``: a shipped preset's is its folder's, a file's is its own key, else its base's, else the
registry's rule for files without one). None of these keys reaches the validated configuration.
Reading a supervised preset never imports the meta-RL code (nor gymnasium).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchmaml.errors import ConfigError

SUPERVISED_DIR = Path(__file__).parent / "configs"
RL_DIR = Path(__file__).parent / "rl" / "configs"
METADATA = ("base", "description", "species")
FOLDERS = {"supervised": SUPERVISED_DIR, "rl": RL_DIR}


def supervised_presets() -> list[str]:
    """Names of the supervised presets (sinusoid, Omniglot)."""
    return sorted(path.stem for path in SUPERVISED_DIR.glob("*.toml"))


def rl_presets() -> list[str]:
    """Names of the meta-RL presets (they need ``pip install "torchmaml[rl]"``)."""
    return sorted(path.stem for path in RL_DIR.glob("*.toml"))


def preset_path(name: str) -> Path | None:
    """The file of the preset ``name`` (supervised or RL), or ``None``."""
    for folder in (SUPERVISED_DIR, RL_DIR):
        path = folder / f"{name}.toml"
        if path.exists():
            return path
    return None


def _locate(base: str, relative_to: Path) -> Path:
    path = preset_path(base)
    if path is not None:
        return path
    path = Path(base) if Path(base).is_absolute() else relative_to.parent / base
    if not path.exists():
        raise ConfigError(f"{relative_to}: base {base!r} is neither a preset nor a file; presets: {all_names()}")
    return path


def read_preset(path: Path) -> tuple[str, dict[str, Any]]:
    """The species and keys of the config file ``path``, its ``base`` chain resolved, metadata keys removed."""
    from torchmaml.species import species_of_values

    species, values = _read_chain(Path(path), ())
    return species or species_of_values(values), values


def _read_chain(path: Path, seen: tuple[Path, ...]) -> tuple[str | None, dict[str, Any]]:
    from torchmaml.run.config_io import read_toml
    from torchmaml.species import check_species, file_values, species_of_values

    path = Path(path)
    if path.resolve() in seen:
        chain = " -> ".join(p.stem for p in (*seen, path.resolve()))
        raise ConfigError(f"{path}: presets inherit in a circle ({chain}); remove one of the base keys")
    own = read_toml(path)
    base = own.get("base")
    species = check_species(own["species"], path) if "species" in own else _folder_species(path)
    values: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f'{path}: base must be a preset name or a file, e.g. base = "omniglot-20w1s"')
        inherited, values = _read_chain(_locate(base, path), (*seen, path.resolve()))
        species = species or inherited
    own = file_values(species or species_of_values(own), own)  # current names, sections lifted: merged key by key
    values.update({key: value for key, value in own.items() if key not in METADATA})
    return species, values


def _folder_species(path: Path) -> str | None:
    """The species of a shipped preset (its folder's); ``None`` for a user's file."""
    folder = path.resolve().parent
    return next((name for name, shipped in FOLDERS.items() if shipped.resolve() == folder), None)


def description(path: Path) -> str:
    """The preset's one-line ``description`` (falls back to its first comment line)."""
    from torchmaml.run.config_io import read_toml

    text = read_toml(path).get("description")
    if isinstance(text, str):
        return text
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def all_names() -> str:
    return ", ".join(supervised_presets() + rl_presets())


def listing() -> str:
    """``torchmaml presets``: every preset with its description, RL presets marked with their extra."""
    rows = [(name, description(SUPERVISED_DIR / f"{name}.toml")) for name in supervised_presets()]
    for name in rl_presets():
        extra = "mujoco" if name.startswith("half-cheetah") else "rl"
        rows.append((name, f'{description(RL_DIR / f"{name}.toml")} (needs "torchmaml[{extra}]")'))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {text}" for name, text in rows)
