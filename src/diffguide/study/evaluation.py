"""What the demo and the guidance benchmark measure samples against: the exact mixture, or your points.

`user_data(path)` reads a 2D data file for `--data` (the formats of data/files.py) and gives the config
overrides that train the demo's pair on it. `evaluation_for(run, ...)` gives the scorer:

- MixtureEvaluation (the built-in mixtures and mixture files): precision, coverage, mean log p and
  sliced W2 against the exact density (metrics.points.MixtureMetrics).
- PointsEvaluation (a point cloud: no density): sliced W2 to the data and the mean distance of a sample
  to its nearest data point; precision, coverage and mean log p are None, with SKIPPED as the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from diffguide.data.files import MIXTURE_SUFFIXES, POINT_SUFFIXES, read_mixture, read_points
from diffguide.errors import DataError
from diffguide.metrics.points import METRICS, MixtureMetrics, class_labels, sliced_w2

EXACT_ONLY = ("precision", "coverage", "mean_logp")
SKIPPED = (
    "precision, coverage and mean log p need an exact density: give a mixture file (.json or "
    ".safetensors with weights, means, covs) to get them"
)


@dataclass(frozen=True)
class UserData:
    """A --data file, checked: the overrides that train on it and what it offers."""

    path: Path
    overrides: tuple[str, ...]
    exact: bool
    conditional: bool

    @property
    def name(self) -> str:
        return self.path.stem


def user_data(path: str | Path) -> UserData:
    """Read and check a 2D data file for --data (DataError naming the file and the rule on a bad one)."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix in MIXTURE_SUFFIXES:
        mixture = read_mixture(p)
        dim, classes, name = mixture.dim, mixture.num_classes, "mixture"
    elif suffix in POINT_SUFFIXES:
        points, labels = read_points(p)
        dim, classes, name = points.shape[1], 0 if labels is None else int(labels.max()) + 1, "points"
    else:
        raise DataError(
            f"--data {str(p)!r}: expected points ({' / '.join(POINT_SUFFIXES)}) or a mixture "
            f"({' / '.join(MIXTURE_SUFFIXES)})"
        )
    if dim != 2:
        raise DataError(f"--data {str(p)!r} holds {dim}-dimensional data; the demo draws 2D data (D = 2)")
    conditional = classes > 1  # one class is no condition: CFG is skipped, autoguidance still runs
    overrides = (
        f"data.name={json.dumps(name)}",
        f"data.path={json.dumps(str(p.resolve()))}",
        f"data.conditional={str(conditional).lower()}",
        "data.options={}",
    )
    return UserData(p, overrides, name == "mixture", conditional)


class MixtureEvaluation:
    """Exact metrics against the run's mixture; labels in its class proportions."""

    exact = True
    skipped = ""

    def __init__(self, run, n_reference: int, seed: int):
        self.mixture = run.dataset.mixture
        self.conditional = bool(run.num_classes)
        self.metrics = MixtureMetrics(self.mixture, n_reference=n_reference, seed=seed)
        self.tau = self.metrics.tau

    def labels(self, n: int, seed: int) -> torch.Tensor | None:
        return class_labels(self.mixture, n, seed=seed) if self.conditional else None

    def truth(self, n: int, seed: int):
        """n draws of the data (x, labels): the finite-sample ceiling of every metric."""
        x, comp = self.mixture.sample(n, generator=torch.Generator().manual_seed(seed))
        return x, self.mixture.classes[comp]

    def evaluate(self, x, labels=None) -> dict:
        return self.metrics.evaluate(x, labels if self.conditional else None)


class PointsEvaluation:
    """Sample metrics against a point cloud: sliced W2 to the data, mean distance to the nearest point.

    The points are shuffled once (seed) and split: up to n_truth (half the points at most) held out as
    the "ground truth" sample set (its scores are the finite-sample floor), the rest (at most
    n_reference) is the reference every sample set is scored against."""

    exact = False
    skipped = SKIPPED

    def __init__(self, run, n_reference: int, seed: int, n_truth: int):
        points = torch.as_tensor(run.dataset.points, dtype=torch.float64)
        labels = getattr(run.dataset, "labels", None)
        order = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))
        self.held_out = min(n_truth, len(points) // 2)
        self.points = points[order]
        self.point_labels = None if labels is None else torch.as_tensor(labels)[order]
        self.reference = self.points[self.held_out :][:n_reference]
        self.conditional = bool(run.num_classes)
        self.num_classes = run.num_classes

    def labels(self, n: int, seed: int) -> torch.Tensor | None:
        """n labels in the data's class proportions (None for an unconditional run)."""
        if not self.conditional:
            return None
        counts = torch.bincount(self.point_labels, minlength=self.num_classes).double()
        return torch.multinomial(counts, n, replacement=True, generator=torch.Generator().manual_seed(seed))

    def truth(self, n: int, seed: int):
        """The held-out points (n of them, fewer when the data has under 2n points; seed unused)."""
        pick = slice(0, min(n, self.held_out))
        return self.points[pick], None if self.point_labels is None else self.point_labels[pick]

    def evaluate(self, x, labels=None) -> dict:
        x = torch.as_tensor(x, dtype=torch.float64)
        finite = torch.isfinite(x).all(1)
        nearest = torch.cdist(x[finite], self.reference).min(1).values
        return {
            **dict.fromkeys(EXACT_ONLY),
            "sliced_w2": sliced_w2(x[finite], self.reference) if bool(finite.any()) else float("inf"),
            "distance_to_data": float(nearest.mean()) if bool(finite.any()) else float("inf"),
            "n": len(x),
        }


def evaluation_for(run, n_reference: int, seed: int, n_truth: int):
    """The exact evaluation when the run's data has a mixture, else the point-cloud one (holding out
    n_truth points as its ground-truth sample set)."""
    if getattr(run.dataset, "mixture", None) is not None:
        return MixtureEvaluation(run, n_reference, seed)
    if getattr(run.dataset, "points", None) is None:
        raise DataError(f"run {str(run.path)!r}: its data has neither a mixture nor points to compare with")
    return PointsEvaluation(run, n_reference, seed, n_truth)


def rounded(metrics: dict) -> dict:
    """The headline numbers of one evaluation, rounded; None where the data has no exact density."""
    keys = (*METRICS, "distance_to_data") if "distance_to_data" in metrics else METRICS
    return {k: None if metrics.get(k) is None else round(float(metrics[k]), 5) for k in keys}
