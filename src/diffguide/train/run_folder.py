"""The run folder: created with the resolved config.json before training writes anything else."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from diffguide.config import RunConfig, from_dict, to_dict
from diffguide.data.files import keep_data_file
from diffguide.errors import CheckpointError, ConfigError, output_error
from diffguide.io import atomic_write_text


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> Path:
    """Create the run folder and write config.json; refuse to overwrite a different run."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        saved = json.loads(cfg_path.read_text())
        with contextlib.suppress(ConfigError):  # keys added since the run was saved take their defaults
            saved = to_dict(from_dict(RunConfig, saved))
        if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise CheckpointError(
                f"run folder {str(run_dir)!r} already holds checkpoints; pass --resume to continue it "
                "or choose another --out"
            )
        if resume and saved != to_dict(cfg):
            changed = sorted(k for k in saved if saved[k] != to_dict(cfg).get(k))
            raise CheckpointError(
                f"cannot resume {str(run_dir)!r}: the config differs from the saved one in {changed}"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, json.dumps(to_dict(cfg), indent=2) + "\n")
        keep_data_file(cfg.data, run_dir)
    except OSError as e:
        raise output_error(run_dir, e) from None
    return run_dir
