"""Guidance options of `train` and `sample` (filled in by the guidance feature)."""

from __future__ import annotations


def add_train_args(p) -> None:
    return None


def add_sample_args(p) -> None:
    return None


def after_train(args, cfg, run_dir) -> None:
    return None


def guided_denoiser(args, run):
    """The denoiser to sample with: the run's own until guidance options are added."""
    return run.denoiser
