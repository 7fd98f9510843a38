"""No pickle is ever loaded from a user file: grep the package source."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diffguide"


def test_no_pickle_loading_in_package():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if re.search(
            r"\bpickle\.loads?\(|\bcloudpickle\b|\bjoblib\.load\(|np\.load\([^)]*allow_pickle=True", text
        ):
            offenders.append(f"{path.name}: pickle")
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path.name}: torch.load without weights_only=True")
    assert not offenders, offenders


def test_checkpoints_are_safetensors_and_configs_json(tmp_path):
    """What a run folder holds: safetensors weights, JSON config, no pickle-format file."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train

    run = train(apply_overrides(load_preset("tiny"), ["train.steps=5"]), tmp_path / "run", progress=False)
    suffixes = {p.suffix for p in run.rglob("*") if p.is_file() and not p.name.startswith("events.")}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".png", ""}, suffixes
    for f in (run / "checkpoints").glob("*.safetensors"):
        assert not f.read_bytes().startswith(b"\x80")  # pickle protocol marker
