"""Pairing runs for guidance: train an expert's amateur or classifier, and find them again later.

An expert run folder may hold guidance.json, a small note naming its guides by path relative to the
expert's folder: {"amateur": "../NAME-amateur", "classifier": "../NAME-classifier"}. `diffguide
sample --guidance auto` reads it, so the pair trained by `diffguide train --with-amateur` is found
without further options; any other run can be used instead with `--guide RUN_DIR`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from diffguide.classifiers.points import ClassifierConfig, train_classifier
from diffguide.config import RunConfig, validate
from diffguide.errors import CheckpointError, ConfigError
from diffguide.io import atomic_write_text
from diffguide.train import train

NOTE_FILE = "guidance.json"


def amateur_config(cfg: RunConfig, width: int | None = None, steps: int | None = None) -> RunConfig:
    """The amateur of Karras et al. 2024: the expert's config, narrower and/or trained for fewer steps.

    Defaults: half the width and half the training steps. The paper's 2D toy uses 1/8 of the training,
    but its nets learn from exact scores; trained by denoising score matching as here, a 1/8-step
    amateur is so poor that guiding by it trades variety away quickly (measured on the tree: w32 x 1000
    steps against a w64 x 2000 expert kept coverage within 0.025 at w = 1.5, a 250-step amateur did
    not). Width and steps given explicitly replace the defaults; pass the expert's width for the S-curve experiment's
    "same net, fewer steps".
    Data, conditioning, label dropout, noise process and loss stay the expert's: the amateur must make
    the same kind of errors, only more of them.
    """
    out = copy.deepcopy(cfg)
    out.name = f"{cfg.name}-amateur"
    if cfg.model.arch == "unet":  # the U-Net's width is model.channels, which must stay even
        out.model.channels = int(width) if width else max(2, cfg.model.channels // 4 * 2)
    else:
        out.model.width = int(width) if width else max(1, cfg.model.width // 2)
    out.train.steps = int(steps) if steps else max(1, cfg.train.steps // 2)
    out.train.warmup_steps = min(out.train.warmup_steps, max(0, out.train.steps // 4))
    out.train.ckpt_every = min(out.train.ckpt_every, out.train.steps)
    out.description = (
        f"amateur of {cfg.name} for autoguidance: width {amateur_width(out)}, {out.train.steps} steps"
    )
    return validate(out)


def amateur_width(cfg: RunConfig) -> int:
    """The width an amateur is narrowed along: model.channels for a U-Net, model.width for an MLP."""
    return cfg.model.channels if cfg.model.arch == "unet" else cfg.model.width


def write_guidance_note(run_dir: str | Path, **guides: str | Path) -> Path:
    """Add/replace entries of run_dir/guidance.json; paths are stored relative to run_dir."""
    run_dir = Path(run_dir)
    note = read_guidance_note(run_dir)
    for key, path in guides.items():
        note[key] = os.path.relpath(Path(path).resolve(), run_dir.resolve())
    atomic_write_text(run_dir / NOTE_FILE, json.dumps(note, indent=2) + "\n")
    return run_dir / NOTE_FILE


def read_guidance_note(run_dir: str | Path) -> dict:
    """The note's entries as stored (relative paths); {} when there is none."""
    path = Path(run_dir) / NOTE_FILE
    if not path.is_file():
        return {}
    try:
        note = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(note, dict):
        raise CheckpointError(f"{path} should hold a JSON object, got {type(note).__name__}")
    return note


def find_guide(run_dir: str | Path, key: str, explicit: str | Path | None = None) -> Path:
    """The guide folder for `key` ('amateur', 'classifier'): `explicit` if given, else the note's entry."""
    if explicit:
        path = Path(explicit)
        if not path.is_dir():
            raise ConfigError(f"--guide {str(explicit)!r} is not a folder")
        return path
    note = read_guidance_note(run_dir)
    if key not in note:
        how = "--with-amateur" if key == "amateur" else "--with-classifier"
        raise ConfigError(
            f"run {str(run_dir)!r} names no {key} (no {NOTE_FILE} entry); pass --guide FOLDER, "
            f"or train the pair with `diffguide train ... {how}`"
        )
    path = (Path(run_dir) / note[key]).resolve()
    if not path.is_dir():
        raise ConfigError(f"the {key} named in {Path(run_dir) / NOTE_FILE} does not exist: {str(path)!r}")
    return path


def check_compatible(main_run, guide_run) -> None:
    """A guide must denoise the same data shape with the same conditioning as the main model."""
    if tuple(main_run.dataset.shape) != tuple(guide_run.dataset.shape):
        raise ConfigError(
            f"guide {str(guide_run.path)!r} models shape {tuple(guide_run.dataset.shape)} but the main run "
            f"models {tuple(main_run.dataset.shape)}"
        )
    if main_run.num_classes != guide_run.num_classes:
        raise ConfigError(
            f"guide {str(guide_run.path)!r} has {guide_run.num_classes} classes but the main run has "
            f"{main_run.num_classes}; autoguidance needs the same conditioning"
        )


def train_amateur(
    cfg: RunConfig,
    expert_dir: str | Path,
    width: int | None = None,
    steps: int | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train the amateur next to the expert (RUNS/NAME-amateur) and note it in the expert's folder."""

    expert_dir = Path(expert_dir)
    acfg = amateur_config(cfg, width, steps)
    amateur_dir = expert_dir.parent / acfg.name
    train(acfg, amateur_dir, resume=resume, progress=progress)
    write_guidance_note(expert_dir, amateur=amateur_dir)
    return amateur_dir


def train_run_classifier(
    cfg: RunConfig, expert_dir: str | Path, steps: int | None = None, *, progress: bool = True
) -> Path:
    """Train a noise-conditional classifier on the run's data (RUNS/NAME-classifier) and note it."""

    expert_dir = Path(expert_dir)
    ccfg = ClassifierConfig(seed=cfg.train.seed)
    if steps:
        ccfg.steps = int(steps)
    out = train_classifier(cfg, expert_dir.parent / f"{cfg.name}-classifier", ccfg, progress=progress)
    write_guidance_note(expert_dir, classifier=out)
    return out
