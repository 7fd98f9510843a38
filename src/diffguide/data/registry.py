"""The dataset registry: names the CLI and presets accept, and the common dataset interface."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import lookup


class Dataset:
    """A training set. shape: per-sample shape; num_classes: 0 if unlabelled.

    `mixture` is the exact GaussianMixture when the data has one (2D analytic sets), else None.
    `labels_spec` describes the conditioning ("class" or a richer spec for multi-attribute data).
    """

    shape: tuple[int, ...] = (2,)
    num_classes: int = 0
    class_names: list[str] = []
    mixture = None
    kind = "points"  # "points" (low-dimensional) or "images"

    def sample_batch(self, n: int, generator: torch.Generator):
        """n training examples drawn with `generator`: (x0 [n, *shape] float32, labels [n] long or None)."""
        raise NotImplementedError


@dataclass
class DataConfig:
    """Which data to train on. `size` is the number of points drawn for sample-only 2D sets."""

    name: str = "tree"
    size: int = 100_000
    conditional: bool = False
    seed: int = 0
    path: str = ""  # for file-based image sets (mnist IDX folder, image folder)
    options: dict = field(default_factory=dict)


DATASETS: dict[str, Callable[[DataConfig], Dataset]] = {}


def register(name: str):
    """Decorator adding a dataset factory under `name`."""

    def deco(fn):
        DATASETS[name] = fn
        return fn

    return deco


def make_dataset(cfg: DataConfig) -> Dataset:
    """Build the dataset a config names (error lists the closest names)."""
    from . import points  # noqa: F401  (registers the 2D sets)

    with contextlib.suppress(ImportError):
        from . import images  # noqa: F401  (registers image sets, if present)
    return lookup("dataset", cfg.name, DATASETS)(cfg)
