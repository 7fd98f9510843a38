"""dict <-> config dataclasses, with errors naming the bad key and the closest valid ones."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict

from diffguide.config.schema import RunConfig
from diffguide.errors import ConfigError, unknown

# Keys where run folders saved before "not set" was None hold 0 for it: read as None.
ZERO_MEANS_UNSET = frozenset({"sample.sigma_min", "sample.sigma_max"})


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce_union(value, tp, key: str):
    errors = []
    for option in typing.get_args(tp):
        try:
            return _coerce(value, option, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0])


def _coerce_number(value, tp, key: str):
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):  # no setting means anything at NaN or infinity
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _coerce(value, tp, key: str):
    """Check/convert a parsed value to the field type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is typing.Literal:  # a registry's names: validate() looks them up, naming the closest
        return _coerce(value, str, key)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected nothing, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        return _coerce_number(value, tp, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp in (list, dict) or origin in (list, dict):
        base = origin or tp
        if not isinstance(value, base):
            raise ConfigError(f"{key}: expected a {base.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _zero_means_unset(key: str, value) -> bool:
    return key in ZERO_MEANS_UNSET and type(value) in (int, float) and value == 0


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys raise with the closest valid names."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise unknown("config key", full, [f"{prefix}{n}" for n in names])
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, prefix=f"{full}.")
        elif _zero_means_unset(full, value):
            kwargs[key] = None
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return asdict(cfg)


def all_keys(cls=RunConfig, prefix: str = "") -> dict[str, type]:
    """Every dotted leaf key of a config class and its type."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(all_keys(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out
