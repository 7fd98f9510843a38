"""Snapshots of the power-function EMAs (EDM2's post-hoc EMA): RUN/ema-snapshots/ema-STEP.safetensors.

One file per snapshot step holds every profile of train.ema_stds (tensors `profile{i}.{name}`; the
metadata lists the stds, their gammas and the step), written atomically with a sha256 of its tensors
like a checkpoint. Snapshots are never pruned: post-hoc reconstruction (posthoc.py) combines them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from diffguide.errors import CheckpointError
from diffguide.io import atomic_save_tensors
from diffguide.train.checkpoint import checkpoint_metadata, read_checkpoint
from diffguide.train.ema import PowerEMA

SNAPSHOT_FORMAT = "diffguide-ema-snapshot-1"
SNAPSHOT_FOLDER = "ema-snapshots"


@dataclass
class Snapshot:
    """One stored profile: the power-function average with exponent `gamma` of steps 1..`step`."""

    step: int
    std: float
    gamma: float
    tensors: dict[str, torch.Tensor]  # the module's state_dict names -> averaged values
    path: Path


def snapshot_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"ema-{step:08d}.safetensors"


def list_snapshots(folder: Path) -> list[Path]:
    """Snapshot files in a run's ema-snapshots/ folder, oldest first."""
    folder = Path(folder)
    return sorted(folder.glob("ema-*.safetensors")) if folder.is_dir() else []


def snapshot_step(path: Path) -> int:
    return int(Path(path).name[len("ema-") : -len(".safetensors")])


def save_snapshot(folder: Path, step: int, power_ema: PowerEMA) -> Path:
    """Write every profile of `power_ema` after step `step` as one snapshot file (atomically)."""
    tensors = {f"profile{i}.{k}": v for i, shadow in enumerate(power_ema.shadows) for k, v in shadow.items()}
    meta = {"stds": power_ema.stds, "gammas": power_ema.gammas}
    path = snapshot_path(folder, step)
    atomic_save_tensors(path, tensors, checkpoint_metadata(step, tensors, meta, fmt=SNAPSHOT_FORMAT))
    return path


def read_snapshots(path: Path) -> list[Snapshot]:
    """The profiles one snapshot file holds; a damaged or foreign file raises CheckpointError."""
    tensors, meta = read_checkpoint(path)
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an EMA snapshot (format {meta.get('format')!r})")
    step, stds, gammas = int(meta["step"]), json.loads(meta["stds"]), json.loads(meta["gammas"])
    out = []
    for i, (std, gamma) in enumerate(zip(stds, gammas)):
        prefix = f"profile{i}."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        out.append(Snapshot(step, float(std), float(gamma), own, Path(path)))
    return out


def remove_snapshots_after(folder: Path, step: int) -> None:
    """Delete snapshots newer than `step`: a run resumed from an earlier checkpoint writes them again
    (as metrics.jsonl drops its records after the resumed step)."""
    for path in list_snapshots(folder):
        if snapshot_step(path) > step:
            path.unlink(missing_ok=True)
