"""Rebuild a trained model from its run folder alone (config.json + safetensors checkpoint)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from diffguide.config import RunConfig, from_dict, validate
from diffguide.data.record import dataset_for_run, ensure_dataset_known
from diffguide.errors import CheckpointError
from diffguide.models.build import build_denoiser, build_network
from diffguide.processes import NoiseProcess, make_process
from diffguide.train.checkpoint import (
    latest_good_checkpoint,
    list_checkpoints,
    load_module_tensors,
    read_checkpoint,
)


@dataclass
class Run:
    """A loaded run: its folder, config, dataset, noise process, eval-mode denoiser and step."""

    path: Path
    config: RunConfig
    dataset: object
    process: NoiseProcess
    denoiser: torch.nn.Module
    step: int
    checkpoint: Path

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes if self.config.data.conditional else 0


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run folder: it has no config.json")
    try:
        cfg = from_dict(RunConfig, json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    ensure_dataset_known(cfg.data, run_dir)  # a dataset registered from Python: from the run's record
    return validate(cfg)


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, use_ema: bool = True, device: str = "cpu"
) -> Run:
    """Load a run's model (EMA weights by default) from its latest good checkpoint or a given one."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    if checkpoint is None:
        found = latest_good_checkpoint(run_dir / "checkpoints")
        if found is None:
            bad = [p.name for p in list_checkpoints(run_dir / "checkpoints")]
            raise CheckpointError(
                f"run {str(run_dir)!r} has no readable checkpoint in {str(run_dir / 'checkpoints')!r}"
                + (
                    f": {', '.join(bad)} "
                    + (
                        "is damaged (truncated, corrupted or not a safetensors file)"
                        if len(bad) == 1
                        else "are all unreadable"
                    )
                    + "; train the run again"
                    if bad
                    else " (was its training stopped before the first checkpoint?)"
                )
            )
        path, tensors, meta = found
    else:
        path = Path(checkpoint)
        if not path.is_absolute() and not path.exists():
            path = run_dir / "checkpoints" / path
        tensors, meta = read_checkpoint(path)
    if not use_ema and not any(k.startswith("model.") for k in tensors):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds EMA weights only (a post-hoc EMA reconstruction?); "
            "load its EMA weights (drop --raw / use_ema=False)"
        )
    dataset = dataset_for_run(cfg.data, run_dir)
    net = build_network(cfg, dataset)
    load_module_tensors(net, tensors, "ema." if use_ema else "model.", source=repr(str(path)))
    denoiser = build_denoiser(cfg, net).to(device).eval()
    return Run(
        run_dir, cfg, dataset, make_process(cfg.diffusion.process), denoiser, int(meta.get("step", 0)), path
    )
