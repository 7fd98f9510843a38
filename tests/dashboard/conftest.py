"""The dashboard tests' runs: `tiny`, its amateur and an unconditional run, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffguide.plots.points import write_run_figure
from tests.helpers import shared_runs


def train_source_runs(out: Path) -> None:
    """tiny, its amateur tiny-amateur and an unconditional tiny-uncond, trained with diffguide.train.train."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.guidance.pairing import write_guidance_note
    from diffguide.train import train

    train(load_preset("tiny"), out / "tiny", progress=False)
    write_run_figure(out / "tiny")  # samples.png, as the train command writes it
    small = ["model.width=16", "train.steps=20", "train.ckpt_every=20", "train.log_every=5", "sample.n=100"]
    amateur = apply_overrides(load_preset("tiny"), small)
    amateur.name = "tiny-amateur"
    train(amateur, out / "tiny-amateur", progress=False)
    write_guidance_note(out / "tiny", amateur=out / "tiny-amateur")
    uncond = apply_overrides(load_preset("tiny"), [*small, "data.conditional=false", "train.steps=10"])
    uncond.name = "tiny-uncond"
    train(uncond, out / "tiny-uncond", progress=False)


@pytest.fixture(scope="session")
def dashboard_source_runs(tmp_path_factory) -> Path:
    return shared_runs(tmp_path_factory, "dashboard-runs", train_source_runs)
