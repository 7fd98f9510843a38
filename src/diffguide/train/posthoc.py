"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion models",
sec. 3.2 and appendix C.3): the power-function EMA of any relative std, rebuilt after training as a
least-squares combination of the stored snapshots (snapshots.py) of a few profiles.

A profile is the weight density p(tau) = (gamma+1) tau^gamma / t^(gamma+1) on 0 <= tau <= t over the
training steps; an average of the weights is linear in its profile, so the combination of snapshots
whose profiles sum closest (in L2) to the wanted profile is the closest average the snapshots allow.
The fit needs only the profiles' inner products, which have a closed form (`profile_overlap`).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from diffguide.errors import CheckpointError, ConfigError, output_error
from diffguide.io import atomic_save_tensors
from diffguide.models.runs import load_config
from diffguide.train.checkpoint import checkpoint_metadata
from diffguide.train.ema import MAX_EMA_STD, std_to_gamma
from diffguide.train.snapshots import (
    SNAPSHOT_FOLDER,
    Snapshot,
    list_snapshots,
    read_snapshots,
    snapshot_step,
)

POSTHOC_KEY = "posthoc_ema_std"  # metadata key that marks a post-hoc EMA checkpoint
FIT_WARNING = 0.1  # a profile fit worse than this (relative L2 error) is warned about


def profile_overlap(step_a: float, gamma_a: float, step_b: float, gamma_b: float) -> float:
    """The inner product of two power-function profiles, integral of p_a(tau) p_b(tau) over tau
    (EDM2 appendix C.3): (ga+1)(gb+1) / (ga+gb+1) * ta^gb / tb^(gb+1) for ta <= tb (symmetric)."""
    if step_a > step_b:
        step_a, gamma_a, step_b, gamma_b = step_b, gamma_b, step_a, gamma_a
    ratio = step_a / step_b
    return (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1) * ratio**gamma_b / step_b


def posthoc_coefficients(
    sources: list[tuple[int, float]], target: tuple[int, float]
) -> tuple[torch.Tensor, float]:
    """Least-squares weights of the source profiles (step, gamma) whose sum best matches the target
    profile (EDM2 appendix C.3), normalised to sum to 1; and the fit's relative L2 error.

    Solves A c = b with A the sources' Gram matrix and b their overlaps with the target, in float64 (a
    least-squares solver, so duplicate or nearly dependent snapshots do not break it)."""
    gram = torch.tensor(
        [[profile_overlap(sa, ga, sb, gb) for sb, gb in sources] for sa, ga in sources], dtype=torch.float64
    )
    rhs = torch.tensor([profile_overlap(s, g, *target) for s, g in sources], dtype=torch.float64)
    coefficients = torch.linalg.lstsq(gram, rhs[:, None], driver="gelsd").solution[:, 0]
    coefficients = coefficients / coefficients.sum()
    norm = profile_overlap(*target, *target)
    residual = coefficients @ gram @ coefficients - 2 * coefficients @ rhs + norm
    return coefficients, math.sqrt(max(float(residual), 0.0) / norm)


@dataclass
class PosthocResult:
    """What posthoc_ema wrote: the checkpoint, the step it averages up to, the fit's relative L2 error."""

    path: Path
    step: int
    std: float
    fit_error: float
    snapshots: int  # profiles combined


def check_std(std: float) -> float:
    """`std` if it is a power-function profile's relative std, else a ConfigError saying the range."""
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std):
        raise ConfigError(
            f"post-hoc EMA std must be a finite number in (0, {MAX_EMA_STD:.4f}), e.g. --std 0.05; got {std}"
        )
    if not 0 < std < MAX_EMA_STD:
        raise ConfigError(
            f"post-hoc EMA std {std} is out of range: a power-function EMA's relative std is in "
            f"(0, {MAX_EMA_STD:.4f}) (gamma > 0; sqrt(1/12) is the plain average of every step), e.g. --std 0.05"
        )
    return float(std)


def default_posthoc_path(run_dir: str | Path, std: float) -> Path:
    """RUN/checkpoints/posthoc-std0.050.safetensors: beside the checkpoints, where `sample --checkpoint
    NAME` looks, but outside their ckpt-* names (so `latest`, resume and keep_last never see it)."""
    label = f"{std:.3f}" if abs(std - round(std, 3)) < 1e-12 else repr(std)
    return Path(run_dir) / "checkpoints" / f"posthoc-std{label}.safetensors"


def posthoc_ema(run_dir: str | Path, std: float, out: str | Path | None = None) -> PosthocResult:
    """Reconstruct the power-function EMA of relative std `std` at the newest snapshot from a run's
    ema-snapshots/ and write it as a checkpoint whose `ema.` tensors are the reconstructed weights
    (load_run(run_dir, checkpoint=path) loads it; so do `sample --checkpoint` and the guide options)."""
    std = check_std(std)
    run_dir = Path(run_dir)
    out = default_posthoc_path(run_dir, std) if out is None else Path(out)
    _check_overwrite(out, std)  # before any snapshot is read
    cfg = load_config(run_dir)
    snapshots = _snapshot_profiles(run_dir, cfg.train.ema_stds)
    step = max(s.step for s in snapshots)
    gamma = std_to_gamma(std)
    coefficients, fit_error = posthoc_coefficients([(s.step, s.gamma) for s in snapshots], (step, gamma))
    if fit_error > FIT_WARNING:
        warnings.warn(
            f"the stored profiles fit std {std} poorly (relative L2 error {fit_error:.2g} from "
            f"{len(snapshots)} profiles of stds {sorted({s.std for s in snapshots})}); store more snapshots "
            "(train.ema_snapshot_every) or stds nearer it (train.ema_stds)",
            stacklevel=2,
        )
    tensors = {f"ema.{k}": v for k, v in combine(snapshots, coefficients).items()}
    meta = {POSTHOC_KEY: repr(std), "posthoc_ema_gamma": repr(gamma), "posthoc_fit_error": repr(fit_error)}
    meta["posthoc_snapshots"] = str(len(snapshots))
    try:
        atomic_save_tensors(out, tensors, checkpoint_metadata(step, tensors, meta))
    except OSError as e:
        raise output_error(out, e) from None
    return PosthocResult(out, step, std, fit_error, len(snapshots))


def posthoc_checkpoint(run_dir: str | Path, std: float) -> Path:
    """The run's post-hoc EMA checkpoint of `std` at its newest snapshot: RUN/checkpoints/posthoc-stdS
    if it is already there and up to date, else written now. For a guide that is "the same run with
    another EMA": load_run(run_dir, checkpoint=posthoc_checkpoint(run_dir, S))."""
    std = check_std(std)
    path = default_posthoc_path(run_dir, std)
    paths = list_snapshots(Path(run_dir) / SNAPSHOT_FOLDER)
    if path.is_file() and paths:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError):
            meta = {}
        if meta.get(POSTHOC_KEY) == repr(std) and meta.get("step") == str(snapshot_step(paths[-1])):
            return path
    return posthoc_ema(run_dir, std).path


def combine(snapshots: list[Snapshot], coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_i coefficients[i] * snapshot_i, accumulated in float64 and returned in each tensor's dtype;
    integer state (counters) is the newest snapshot's. Reads one snapshot file at a time."""
    index = {(s.path, s.std): i for i, s in enumerate(snapshots)}
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    counters: dict[str, torch.Tensor] = {}
    for path in dict.fromkeys(s.path for s in snapshots):  # oldest file first
        for stored in _read(path):
            if (path, stored.std) not in index:  # a profile left out of the fit
                continue
            c = float(coefficients[index[(path, stored.std)]])
            for k, v in stored.tensors.items():
                if v.dtype.is_floating_point:
                    total[k] = c * v.to(torch.float64) + total.get(k, 0)
                    dtypes[k] = v.dtype
                else:
                    counters[k] = v  # the newest file's wins
    return {**{k: v.to(dtypes[k]) for k, v in total.items()}, **counters}


def _read(path: Path) -> list[Snapshot]:
    try:
        return read_snapshots(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; delete {str(path)!r} to reconstruct from the other snapshots") from None


def _snapshot_profiles(run_dir: Path, ema_stds: list) -> list[Snapshot]:
    """Every stored profile (step, std, gamma) of a run, read from the files' metadata (no tensors)."""
    folder = run_dir / SNAPSHOT_FOLDER
    paths = list_snapshots(folder)
    if not paths:
        why = (
            "it was trained without train.ema_stds"
            if not ema_stds
            else "training stopped before the first snapshot (train.ema_snapshot_every)"
        )
        raise CheckpointError(
            f"run {str(run_dir)!r} has no EMA snapshots in {str(folder)!r} ({why}); train it with "
            "--set 'train.ema_stds=[0.05, 0.10]' to store power-function EMA snapshots"
        )
    profiles = []
    for path in paths:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"EMA snapshot {str(path)!r} is truncated or not a safetensors file ({e}); delete it to "
                "reconstruct from the other snapshots"
            ) from None
        profiles += _profiles_from_meta(path, meta)
    return profiles


def _profiles_from_meta(path: Path, meta: dict) -> list[Snapshot]:
    try:
        stds, gammas, step = json.loads(meta["stds"]), json.loads(meta["gammas"]), int(meta["step"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f"{str(path)!r} is not an EMA snapshot (its metadata lacks {e}); delete it or move it out of "
            f"{SNAPSHOT_FOLDER}/"
        ) from None
    return [Snapshot(step, float(s), float(g), {}, path) for s, g in zip(stds, gammas)]


def _check_overwrite(out: Path, std: float) -> None:
    """Refuse an --out that is not a .safetensors file, that has a training checkpoint's name, or that
    would replace a file other than a post-hoc EMA checkpoint (a training checkpoint, say)."""
    example = default_posthoc_path(".", std).name
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"--out {str(out)!r} must end in .safetensors (posthoc-ema writes a checkpoint); e.g. --out {example}"
        )
    if out.name.startswith("ckpt-"):
        raise ConfigError(
            f"--out {str(out)!r} has a training checkpoint's name (ckpt-*): resume, keep_last and the "
            f"latest-checkpoint lookup would take it for one; choose another --out, e.g. {example}"
        )
    if not out.exists():
        return
    try:
        with safe_open(str(out), "pt") as f:
            ours = POSTHOC_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        ours = False
    if not ours:
        raise ConfigError(
            f"--out {str(out)!r} exists and was not written by `diffguide posthoc-ema` (it is not a post-hoc "
            "EMA checkpoint); choose another --out: posthoc-ema replaces only its own checkpoints"
        )
