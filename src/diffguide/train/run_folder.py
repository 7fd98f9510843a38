"""The run folder: created with the resolved config.json before training writes anything else.

On --resume the saved config is compared key by key with the new one. Keys that only say how long to
train, how often to log and checkpoint, or how to sample later (RESUMABLE_KEYS) may change: the run
continues and config.json is rewritten (atomically) with the new values. Any other change is refused,
naming every differing key with both values.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from diffguide.config import RunConfig, from_dict, to_dict
from diffguide.data.files import keep_data_file
from diffguide.data.record import keep_dataset_record
from diffguide.errors import CheckpointError, ConfigError, output_error
from diffguide.io import atomic_write_text

# Dotted keys (or prefixes ending in '.') that a resumed run may change. train.steps may only grow.
RESUMABLE_KEYS = (
    "name",  # the run's folder name: a renamed folder resumes under its new name
    "description",
    "train.steps",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "sample.",
)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, dataset=None) -> Path:
    """Create the run folder and write config.json; refuse to overwrite a different run.

    Resuming with changes only in RESUMABLE_KEYS prints them and saves the new config. The data file
    (file-based sets) or a record of `dataset` (sets registered from Python) is kept in the folder."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    new = to_dict(cfg)
    if cfg_path.is_file():
        saved = json.loads(cfg_path.read_text())
        with contextlib.suppress(ConfigError):  # keys added since the run was saved take their defaults
            saved = to_dict(from_dict(RunConfig, saved))
        if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise CheckpointError(
                f"run folder {str(run_dir)!r} already holds checkpoints; pass --resume to continue it "
                "or choose another --out"
            )
        if resume:
            changes = config_changes(saved, new)
            check_resumable(changes, run_dir)
            if changes:
                print(
                    f"resuming {run_dir} with "
                    + "; ".join(describe(*c) for c in changes)
                    + _lr_note(cfg, changes)
                )
            else:
                cfg_path = None  # config.json already says this: leave the file alone
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg_path is not None:
            atomic_write_text(cfg_path, json.dumps(new, indent=2) + "\n")
        keep_data_file(cfg.data, run_dir)
        if dataset is not None:
            keep_dataset_record(cfg.data, dataset, run_dir)
    except OSError as e:
        raise output_error(run_dir, e) from None
    return run_dir


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1} (nested dicts only; lists stay values)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_MISSING = object()


def config_changes(saved: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, saved value, new value) for every key that differs, sorted by key."""
    a, b = flatten(saved), flatten(new)
    keys = sorted(set(a) | set(b))
    return [
        (k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in keys if a.get(k, _MISSING) != b.get(k, _MISSING)
    ]


def describe(key: str, saved, now) -> str:
    """'train.lr: saved 0.001, now 0.002' (a key absent on one side reads 'unset')."""

    def show(v):
        return "unset" if v is _MISSING else json.dumps(v)

    return f"{key}: saved {show(saved)}, now {show(now)}"


def _lr_note(cfg: RunConfig, changes) -> str:
    if cfg.train.decay == "none" or not any(c[0] == "train.steps" for c in changes):
        return ""
    return f" (train.decay={cfg.train.decay!r} now decays over the new train.steps, so the learning rate steps up)"


def is_resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def check_resumable(changes: list[tuple[str, object, object]], run_dir: Path) -> None:
    """Refuse changes a resumed run cannot take, naming each key with both values and the way out."""
    fixed = [c for c in changes if not is_resumable(c[0])]
    fixed += [c for c in changes if c[0] == "train.steps" and isinstance(c[2], int) and c[2] < c[1]]
    if not fixed:
        return
    safe = ", ".join(k + ("*" if k.endswith(".") else "") for k in RESUMABLE_KEYS)
    raise CheckpointError(
        f"cannot resume {str(run_dir)!r}: the config differs from the saved one: "
        + "; ".join(describe(*c) for c in fixed)
        + f". Resume with the saved values (e.g. --config {str(run_dir / 'config.json')!r} --resume) or "
        f"train a new run under another --name; a resume may change only {safe} (train.steps may only grow)"
    )
