"""Low-dimensional datasets: exact mixtures (fresh samples each batch) and sample-only 2D sets."""

from __future__ import annotations

import math

import numpy as np
import torch

from diffguide.data.registry import DataConfig, Dataset, Option, register
from diffguide.mixtures import MIXTURES, make_mixture


class MixtureDataset(Dataset):
    """Infinite data from an exact Gaussian mixture; labels are the components' classes."""

    def __init__(self, mixture, conditional: bool):
        self.mixture = mixture
        self.conditional = conditional
        self.shape = (mixture.dim,)
        self.num_classes = mixture.num_classes if conditional else 0
        self.class_names = mixture.class_names if conditional else []

    def sample_batch(self, n, generator):
        x, comp = self.mixture.sample(n, generator=generator)
        labels = self.mixture.classes[comp] if self.conditional else None
        return x.float(), labels


class PointCloudDataset(Dataset):
    """A fixed set of points (e.g. from scikit-learn's generators); batches drawn with replacement."""

    def __init__(self, points: np.ndarray, labels: np.ndarray | None = None, class_names=None):
        self.points = torch.as_tensor(points, dtype=torch.float32)
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.shape = tuple(self.points.shape[1:])
        self.num_classes = 0 if labels is None else int(self.labels.max()) + 1
        self.class_names = class_names or [str(i) for i in range(self.num_classes)]

    def sample_batch(self, n, generator):
        idx = torch.randint(0, len(self.points), (n,), generator=generator)
        return self.points[idx], None if self.labels is None else self.labels[idx]


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std()


def s_curve_points(n: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """The 'S' of the autoguidance notebook: scikit-learn's S-curve seen from the side (x, z)."""
    from sklearn.datasets import make_s_curve

    x, _ = make_s_curve(n, noise=noise, random_state=seed)
    return _standardise(x[:, [0, 2]])


def moons_points(n: int, seed: int = 0, noise: float = 0.05):
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=noise, random_state=seed)
    return _standardise(x), y


def swiss_roll_points(n: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n, noise=noise, random_state=seed)
    return _standardise(x[:, [0, 2]])


def checkerboard_points(n: int, seed: int = 0, squares: int = 4) -> np.ndarray:
    """Uniform points on the dark squares of a squares x squares board in [-2, 2]^2."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(len(o) for o in out) < n:
        p = rng.uniform(-2, 2, size=(2 * n, 2))
        cell = np.floor((p + 2) / (4 / squares)).astype(int)
        out.append(p[(cell.sum(1) % 2) == 0])
    return np.concatenate(out)[:n] / math.sqrt(4 / 3)


# data.options of each set: the keyword arguments of its function, with ranges that keep it small
NOISE = {"noise": Option(float, low=0.0)}
MIXTURE_OPTIONS = {
    "tree": {"depth": Option(int, 1, 10), "per_segment": Option(int, 1, 100), "seed": Option(int, low=0)},
    "8gaussians": {"radius": Option(float, positive=True), "std": Option(float, positive=True)},
    "grid": {
        "size": Option(int, 1, 100),
        "spacing": Option(float, positive=True),
        "std": Option(float, positive=True),
    },
}

for _name in MIXTURES:

    def _factory(cfg: DataConfig, _name=_name):

        return MixtureDataset(make_mixture(_name, **cfg.options), cfg.conditional)

    register(_name, MIXTURE_OPTIONS[_name])(_factory)


@register("scurve", NOISE)
def _scurve(cfg):
    return PointCloudDataset(s_curve_points(cfg.size, cfg.seed, **cfg.options))


@register("moons", NOISE)
def _moons(cfg):
    x, y = moons_points(cfg.size, cfg.seed, **cfg.options)
    return PointCloudDataset(
        x, y if cfg.conditional else None, ["upper", "lower"] if cfg.conditional else None
    )


@register("swissroll", NOISE)
def _swissroll(cfg):
    return PointCloudDataset(swiss_roll_points(cfg.size, cfg.seed, **cfg.options))


@register("checkerboard", {"squares": Option(int, 1, 1000)})
def _checkerboard(cfg):
    return PointCloudDataset(checkerboard_points(cfg.size, cfg.seed, **cfg.options))
