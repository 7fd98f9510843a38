"""The dataset registry: names the CLI and presets accept, and the common dataset interface."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diffguide.errors import ConfigError, lookup, unknown


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


@dataclass(frozen=True)
class Option:
    """One `data.options` entry a dataset accepts: int or float, with its valid range or choices."""

    kind: type = float  # int | float
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    positive: bool = False  # > 0
    choices: tuple = ()

    def describe(self) -> str:
        if self.choices:
            return " or ".join(str(c) for c in self.choices)
        what = "an integer" if self.kind is int else "a number"
        if self.positive:
            return f"{what} > 0" + (f" and <= {self.high}" if self.high is not None else "")
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{what} >= {self.low}"
        return what

    def check(self, key: str, value, dataset: str):
        """value converted to int/float, or a ConfigError naming the key, the value and the valid range."""
        bad = ConfigError(
            f"data.options.{key} of dataset {dataset!r} must be {self.describe()}, got {value!r}"
        )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            value = int(value)
        else:
            value = float(value)
        if self.choices and value not in self.choices:
            raise bad
        if self.positive and not value > 0:
            raise bad
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise bad
        return value


DATASETS: dict[str, Callable[[DataConfig], Dataset]] = {}
OPTIONS: dict[str, dict[str, Option]] = {}  # dataset name -> the data.options it accepts


def register(name: str, options: dict[str, Option] | None = None):
    """Decorator adding a dataset factory under `name`, with the data.options it accepts."""

    def deco(fn):
        DATASETS[name] = fn
        OPTIONS[name] = dict(options or {})
        return fn

    return deco


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def check_data_config(cfg: DataConfig) -> DataConfig:
    """data.name and data.options checked against the registry (closest names on a typo); options
    are converted to the types the dataset expects. Needs no data files: runs at config time."""
    lookup("dataset", cfg.name, DATASETS)
    allowed = OPTIONS[cfg.name]
    if not isinstance(cfg.options, dict):
        raise ConfigError(f"data.options: expected a table, got {cfg.options!r}")
    options = {}
    for key, value in cfg.options.items():
        if key not in allowed:
            if not allowed:
                raise ConfigError(f"dataset {cfg.name!r} takes no data.options; got {key!r}")
            raise unknown("data.options key", key, allowed, where=f" for dataset {cfg.name!r}")
        options[key] = allowed[key].check(key, value, cfg.name)
    return dataclasses.replace(cfg, options=options)


def make_dataset(cfg: DataConfig) -> Dataset:
    """Build the dataset a config names (unknown names and options list the closest valid ones)."""
    cfg = check_data_config(cfg)
    return DATASETS[cfg.name](cfg)
