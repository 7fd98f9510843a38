"""Errors that say what was wrong, with the offending value, and what would be right."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffguideError(Exception):
    """Base class of every error diffguide raises on bad user input."""


class StoppedBySignal(DiffguideError):
    """Work stopped cleanly on SIGINT/SIGTERM; the CLI exits 128 + signum (130 for Ctrl-C, 143 for SIGTERM)."""

    signum: int = 2

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ConfigError(DiffguideError, ValueError):
    """A configuration value, key or name is unknown or out of range."""


class DataError(DiffguideError):
    """A dataset is missing, unreadable or malformed."""


class CheckpointError(DiffguideError):
    """A checkpoint or run folder cannot be used."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The closest valid names to `name`, best first (difflib ratio)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.4)]
    return close


def unknown(kind: str, name: str, choices: Iterable[str], where: str = "") -> ConfigError:
    """Build the standard 'unknown X' error: the bad name, the closest names, all choices.

    where: optional context after the name, e.g. " for dataset 'moons'"."""
    choices = sorted(choices)
    near = closest(name, choices)
    hint = f"; did you mean {' or '.join(repr(c) for c in near)}?" if near else ";"
    rest = [c for c in choices if c not in near]
    ordered = near + rest
    return ConfigError(f"unknown {kind} {name!r}{where}{hint} choices: {', '.join(ordered)}")


def lookup(kind: str, name: str, table: dict):
    """table[name], or the standard 'unknown X' error naming the closest keys."""
    try:
        return table[name]
    except KeyError:
        raise unknown(kind, name, table.keys()) from None


def output_error(path, error: OSError) -> ConfigError:
    """The error for an output file or folder that cannot be written: the path, and why in words."""
    from pathlib import Path

    path = Path(path)
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None and (blocker != path or isinstance(error, (FileExistsError, NotADirectoryError))):
        why = f"{str(blocker)!r} is a file, not a folder"
    else:
        why = error.strerror or str(error)
    return ConfigError(f"cannot write {str(path)!r}: {why}; choose another output path (--out)")
