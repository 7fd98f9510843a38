"""Noise-aware classifiers: for 2D points (`points`) and images (`images`), saved in one record format
(`record`: classifier.json + safetensors weights) and loaded by `load_classifier`, which reads the
record and builds the network of its kind."""

from __future__ import annotations

from pathlib import Path

import torch

from diffguide.classifiers import images, points
from diffguide.classifiers.record import FORMAT, ClassifierRecord, load_weights, read_record

__all__ = ["FORMAT", "ClassifierRecord", "load_classifier", "read_record"]

BUILDERS = {"points": points.build_classifier, "images": images.build_classifier}


def load_classifier(
    path: str | Path, expected: str | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The classifier in folder `path` (a NoisyClassifier or an ImageClassifier, by the record's kind),
    in eval mode with `.record`; `expected` ("points" / "images") refuses the other kind (ConfigError)."""
    record = read_record(path, expected)
    return load_weights(BUILDERS[record.kind](record, path), path, record).to(device)
