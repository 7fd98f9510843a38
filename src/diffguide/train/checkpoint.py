"""Checkpoints: safetensors files (model, EMA, optimizer state, RNG states) written atomically.

A checkpoint is ckpt-XXXXXXXX.safetensors in the run's checkpoints/ folder; `latest` names the newest
good one. Files are written to a temporary name, fsynced and renamed, so a crash never leaves a
half-written checkpoint under a real name. No pickle: tensors in safetensors, everything else JSON.
The metadata holds a sha256 of the tensors (`tensor_digest`), checked on reading, so a checkpoint
corrupted in place (bit rot, a bad copy) is refused like a truncated one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from diffguide.errors import CheckpointError
from diffguide.io import atomic_save_tensors, atomic_write_text

FORMAT = "diffguide-checkpoint-1"
DIGEST_KEY = "sha256"  # metadata key of tensor_digest; checkpoints written before it have none


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimizer state_dict into tensors plus JSON for the param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = t
    return tensors, json.dumps(sd["param_groups"])


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups_json: str):
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order.

    Computed from the tensors rather than the file's data section, so it does not depend on how
    safetensors lays the file out, and reading the file back gives the same digest."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.safetensors"


def latest_step(folder: Path) -> int:
    """The step of the newest checkpoint file in `folder` (0 when there is none)."""
    found = list_checkpoints(folder)
    return int(found[-1].name[len("ckpt-") : -len(".safetensors")]) if found else 0


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in a run's checkpoints/ folder, oldest first."""
    folder = Path(folder)
    return sorted(folder.glob("ckpt-*.safetensors")) if folder.is_dir() else []


def checkpoint_metadata(step: int, tensors: dict[str, torch.Tensor], meta: dict, fmt: str = FORMAT) -> dict:
    """The safetensors metadata of a file in checkpoint format: format, step, `meta` (non-strings as
    JSON) and the tensors' sha256, which read_checkpoint checks."""
    return {
        "format": fmt,
        "step": str(step),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
        DIGEST_KEY: tensor_digest(tensors),
    }


def save_checkpoint(
    folder: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep_last: int
) -> Path:
    """Write ckpt-STEP atomically, point `latest` at it, delete all but the newest keep_last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(step)
    atomic_save_tensors(path, tensors, checkpoint_metadata(step, tensors, meta))
    atomic_write_text(folder / "latest", path.name + "\n")
    for old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint; a truncated, corrupted or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or not a safetensors file ({e})"
        ) from None
    recorded = meta.get(DIGEST_KEY)
    if recorded is not None and (actual := tensor_digest(tensors)) != recorded:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted: its tensors hash to sha256 {actual[:16]}..., "
            f"but its metadata records {recorded[:16]}...: the file changed after it was written"
        )
    return tensors, meta


def latest_good_checkpoint(folder: Path) -> tuple[Path, dict, dict] | None:
    """The newest readable checkpoint, falling back past bad ones with a warning naming each."""
    folder = Path(folder)
    candidates = list_checkpoints(folder)
    pointer = folder / "latest"
    if pointer.is_file():
        named = folder / pointer.read_text().strip()
        if named in candidates:  # the pointer first, then older ones
            candidates = [c for c in candidates if c <= named]
    for path in reversed(candidates):
        try:
            tensors, meta = read_checkpoint(path)
            return path, tensors, meta
        except CheckpointError as e:
            warnings.warn(f"skipping bad checkpoint {path.name}: {e}", stacklevel=2)
    return None


def load_module_tensors(
    module: torch.nn.Module, tensors: dict, prefix: str, source: str | None = None
) -> None:
    """Load `prefix`-named tensors into a module; mismatches raise naming the tensors involved."""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if shape:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shape[:5]
                )
            )
        raise CheckpointError(
            "checkpoint does not fit this architecture ("
            + "; ".join(parts)
            + f"); was {source or 'it'} written by another config?"
        )
    module.load_state_dict(state)
