"""Grid files: a tuned sigma grid as a small JSON file with its provenance, read back checked.

{"format": "diffguide-grid", "version": 1, "sigmas": [80.0, ..., 0.0], "sampler": "ipndm", "nfe": 8,
 "steps": 8, "method": ..., "error_before": ..., "error_after": ..., "run": ..., "checkpoint_sha256":
 ..., "guidance": {...}, ...}: `sigmas` is the only field sampling needs; the rest says what the grid
was tuned for, so that using it elsewhere can warn (`grid_file_warnings`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffguide.errors import ConfigError
from diffguide.io import atomic_write_text
from diffguide.samplers.registry import SAMPLER_SPECS, steps_for_evals

FORMAT = "diffguide-grid"
VERSION = 1


@dataclass
class GridFile:
    """A sigma grid read from a file, with what it was tuned for (empty where the file does not say)."""

    sigmas: torch.Tensor  # [steps + 1] float64, strictly descending, ending in 0
    path: str = ""
    sampler: str = ""
    nfe: int = 0
    run: str = ""
    checkpoint_sha256: str = ""
    guidance: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # the whole JSON object

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def looks_like_grid_file(name: str | Path) -> bool:
    """True for a grid given as a file (a .json name or a path), not as a grid name like 'karras'."""
    text = str(name)
    return text.lower().endswith(".json") or "/" in text or "\\" in text


def check_sigmas(sigmas, where: str) -> torch.Tensor:
    """sigmas as a float64 tensor if they make a grid (finite, strictly descending, at least 2 levels,
    ending in 0), else the error naming `where` and the first offending value."""
    if not isinstance(sigmas, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in sigmas
    ):
        raise ConfigError(f"{where}: 'sigmas' must be a list of numbers, got {sigmas!r:.80}")
    if len(sigmas) < 2:
        raise ConfigError(f"{where}: a grid needs at least 2 sigmas (a start and an end), got {len(sigmas)}")
    for i, v in enumerate(sigmas):
        if not math.isfinite(v):
            raise ConfigError(f"{where}: sigma {i} is {v}; every sigma must be finite")
        if v < 0:
            raise ConfigError(f"{where}: sigma {i} is {v}; sigmas must be >= 0")
    for i in range(1, len(sigmas)):
        if not sigmas[i] < sigmas[i - 1]:
            raise ConfigError(
                f"{where}: sigmas must be strictly descending (sampling goes from high noise to 0), but "
                f"sigma {i} = {sigmas[i]:g} follows sigma {i - 1} = {sigmas[i - 1]:g}"
            )
    if sigmas[-1] != 0:
        raise ConfigError(
            f"{where}: the last sigma must be 0 (sampling ends at clean data), got {sigmas[-1]:g}"
        )
    return torch.tensor(sigmas, dtype=torch.float64)


def write_grid_file(path: str | Path, sigmas: torch.Tensor, **provenance) -> Path:
    """Write sigmas and their provenance (any JSON values: sampler, nfe, run, ...) atomically to path."""
    path = Path(path)
    values = [float(v) for v in sigmas.tolist()]
    check_sigmas(values, f"grid for {str(path)!r}")
    record = {"format": FORMAT, "version": VERSION, "sigmas": values, **provenance}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_grid_file(path: str | Path) -> GridFile:
    """Read and check a grid file (the error names the file and what is wrong with it)."""
    path = Path(path)
    where = f"grid file {str(path)!r}"
    if not path.is_file():
        raise ConfigError(
            f"{where} does not exist; give a grid file written by `diffguide tune-grid`, or a grid name "
            "(karras, loglinear, uniform-t)"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where} is not readable JSON: {e}") from None
    if not isinstance(record, dict) or "sigmas" not in record:
        raise ConfigError(
            f"{where} has no 'sigmas' list; it is not a grid file written by `diffguide tune-grid`"
        )
    sigmas = check_sigmas(record["sigmas"], where)
    guidance = record.get("guidance") or {}
    return GridFile(
        sigmas=sigmas,
        path=str(path),
        sampler=str(record.get("sampler") or ""),
        nfe=int(record.get("nfe") or 0),
        run=str(record.get("run") or ""),
        checkpoint_sha256=str(record.get("checkpoint_sha256") or ""),
        guidance=guidance if isinstance(guidance, dict) else {},
        record=record,
    )


def check_grid_fits(grid: GridFile, *, sigma_min: float, sigma_max: float, process: str = "") -> None:
    """Refuse a grid file that cannot be used as it says: a sampler this version does not have, an NFE
    that does not give its number of steps with its sampler, or sigmas outside the model's noise range
    [sigma_min, sigma_max] (the denoiser was never trained there; a discrete process would clamp them).
    `process` names the model's noise process in the message."""
    where = f"grid file {grid.path!r}"
    if grid.sampler and grid.sampler not in SAMPLER_SPECS:
        raise ConfigError(
            f"{where} was tuned for sampler {grid.sampler!r}, which this diffguide does not have; "
            f"samplers: {', '.join(SAMPLER_SPECS)}"
        )
    if grid.sampler and grid.nfe:
        steps = steps_for_evals(grid.sampler, grid.nfe)
        if steps != grid.steps:
            raise ConfigError(
                f"{where} says nfe {grid.nfe} for sampler {grid.sampler!r}, which takes {steps} steps, but "
                f"holds {grid.steps} steps ({grid.steps + 1} sigmas); the file does not fit its own sampler "
                "and NFE: write it again with `diffguide tune-grid`"
            )
    top, low = float(grid.sigmas[0]), float(grid.sigmas[-2])
    model = f"the model's noise process{f' ({process})' if process else ''}"
    tuned_for = f"process {grid.record['process']!r}" if grid.record.get("process") else "another model"
    if top > sigma_max * (1 + 1e-6) or low < sigma_min * (1 - 1e-6):
        raise ConfigError(
            f"{where} spans sigma {low:g}..{top:g}, outside {model}'s range {sigma_min:g}..{sigma_max:g}: "
            f"it was tuned for {tuned_for}; tune a grid for this model"
        )


def grid_file_warnings(
    grid: GridFile, *, sampler: str, checkpoint_sha256: str = "", run: str = "", guidance=None
):
    """What differs between what the grid was tuned for and how it is used, one sentence each."""
    name = Path(grid.path).name or "the grid file"
    out = []
    if grid.sampler and sampler != grid.sampler:
        per_step = SAMPLER_SPECS[sampler].evals_per_step({}) if sampler in SAMPLER_SPECS else 1
        nfe = (grid.steps - 1) * per_step + 1
        out.append(
            f"{name} was tuned for sampler {grid.sampler!r} ({grid.nfe} evaluations), used with {sampler!r} "
            f"({nfe} evaluations on its {grid.steps} steps): its steps may not suit this sampler"
        )
    if grid.checkpoint_sha256 and checkpoint_sha256 and checkpoint_sha256 != grid.checkpoint_sha256:
        out.append(
            f"{name} was tuned for run {grid.run!r} (checkpoint sha256 {grid.checkpoint_sha256[:12]}...), "
            f"used with run {run!r} (checkpoint sha256 {checkpoint_sha256[:12]}...)"
        )
    if guidance is not None and (guidance or {}) != grid.guidance and "guidance" in grid.record:
        out.append(
            f"{name} was tuned with guidance {describe_guidance(grid.guidance)}, used with "
            f"{describe_guidance(guidance)}: guidance changes the trajectories the grid was tuned on"
        )
    return out


def describe_guidance(guidance: dict | None) -> str:
    """{'kind': 'cfg', 'w': 2.0} -> 'cfg w=2'; none -> 'none'."""
    if not guidance:
        return "none"
    rest = " ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in guidance.items() if k != "kind"
    )
    return f"{guidance.get('kind', '?')} {rest}".strip()
