"""Reading configs: named presets shipped as TOML, config files (.toml, or a run folder's .json) and
`--set key=value` overrides; every path ends in `validate`."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from diffguide.config.convert import all_keys, from_dict, to_dict
from diffguide.config.schema import RunConfig
from diffguide.config.validate import validate
from diffguide.errors import ConfigError, unknown
from diffguide.io import parse_override

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of cfg with each 'dotted.key=value' applied and type-checked."""
    data = to_dict(cfg)
    keys = all_keys()
    for text in overrides:
        key, value = parse_override(text)
        if key not in keys:
            raise unknown("config key", key, keys)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate(from_dict(RunConfig, data))


def _preset_files() -> dict[str, object]:
    folder = resources.files("diffguide") / "presets"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def preset_names() -> list[str]:
    return sorted(_preset_files())


def load_preset(name: str) -> RunConfig:
    """The named preset as a validated RunConfig (its `name` is the preset's name)."""
    files = _preset_files()
    if name not in files:
        raise unknown("preset", name, files)
    data = tomllib.loads(files[name].read_text())
    data.setdefault("name", name)
    return validate(from_dict(RunConfig, data))


def load_config_file(path: str | Path) -> RunConfig:
    """A config from a .json (run folder) or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    return parse_config(text, "json" if path.suffix == ".json" else "toml", source=str(path))


def parse_config(text: str, fmt: str = "toml", source: str = "config") -> RunConfig:
    """A validated RunConfig from TOML or JSON text; any problem is a ConfigError naming it."""
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot parse {source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"cannot parse {source}: nested too deeply") from None
    return validate(from_dict(RunConfig, data))


def preset_summaries() -> list[tuple[str, str]]:
    """(name, one-line description) of every preset."""
    return [(name, load_preset(name).description) for name in preset_names()]
