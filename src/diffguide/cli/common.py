"""Helpers shared by the command-line commands: output folders, JSON files, grid overrides."""

from __future__ import annotations

import json
from pathlib import Path

from diffguide.errors import output_error
from diffguide.io import atomic_write_text


def make_output_folder(out: Path) -> None:
    """Create the folder `out` goes in; an unwritable place is our error naming the path and why."""
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None


def write_json(out: Path, data) -> None:
    """Write `data` as indented JSON to `out` (atomically), creating its folder."""
    make_output_folder(out)
    try:
        atomic_write_text(Path(out), json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise output_error(out, e) from None


def grid_overrides(args, sample_config=None) -> tuple:
    """(sigma_min, sigma_max, rho) for sigma_grid: the command line's where given, else the run's."""
    s = sample_config

    def pick(name, default):
        value = getattr(args, name, None)
        return value if value is not None else (getattr(s, name) if s is not None else default)

    return pick("sigma_min", None), pick("sigma_max", None), pick("rho", 7.0)
