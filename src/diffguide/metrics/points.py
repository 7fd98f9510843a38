"""Exact sample-quality metrics for models trained on an analytic Gaussian mixture.

With the ground-truth density known in closed form, "quality" and "variety" need no feature network:

- precision: fraction of samples inside the highest-density region holding 99% of the true mass
  (ideal 0.99: ground-truth samples land outside it 1% of the time);
- coverage: 1 - total-variation distance between the component-occupancy histograms of the samples
  and of ground-truth samples, each point assigned to its most responsible component (ideal 1);
- mean_logp: mean exact log-density of the samples;
- sliced_w2: sliced Wasserstein-2 distance to ground-truth samples (Rabin et al. 2011; Bonneel et al.
  2015), the root of the mean over random directions of the squared 1-D W2.

Per class, each metric uses the class-conditional mixture p(x | y); overall, the full mixture.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffguide.errors import ConfigError

METRICS = ("precision", "coverage", "mean_logp", "sliced_w2")


def _cond(y, n):
    return None if y is None else torch.full((n,), int(y), dtype=torch.long)


def precision(samples: torch.Tensor, mixture, y: int | None = None, mass: float = 0.99, tau=None) -> float:
    """Fraction of samples with log p(x | y) >= tau, where {log p >= tau} holds `mass` of p (ideal: mass)."""
    x = torch.as_tensor(samples, dtype=torch.float64)
    if tau is None:
        tau = mixture.mass_threshold(mass, cond=y, n=100_000)
    return float((mixture.log_prob(x, 0.0, _cond(y, len(x))) >= tau).double().mean())


def occupancy(points: torch.Tensor, mixture, y: int | None = None) -> torch.Tensor:
    """Component-occupancy histogram [K]: the fraction of points whose most responsible component is k."""
    x = torch.as_tensor(points, dtype=torch.float64)
    resp = mixture.responsibilities(x, 0.0, _cond(y, len(x)))
    return torch.bincount(resp.argmax(1), minlength=len(mixture.weights)).double() / max(1, len(x))


def coverage(samples: torch.Tensor, mixture, reference: torch.Tensor, y: int | None = None) -> float:
    """1 - TV(occupancy(samples), occupancy(reference)); reference = ground-truth samples (ideal 1)."""
    p, q = occupancy(samples, mixture, y), occupancy(reference, mixture, y)
    return float(1 - 0.5 * (p - q).abs().sum())


def mean_logp(samples: torch.Tensor, mixture, y: int | None = None) -> float:
    """Mean exact log-density log p(x | y) of the samples."""
    x = torch.as_tensor(samples, dtype=torch.float64)
    return float(mixture.log_prob(x, 0.0, _cond(y, len(x))).mean())


def random_directions(dim: int, n: int = 256, seed: int = 0) -> torch.Tensor:
    """n unit vectors [n, dim], uniform on the sphere, from a fixed seed (so distances are comparable)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def sorted_projections(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[P, n]: the points projected on each direction, sorted (rows contiguous: sorting is the cost)."""
    x = torch.as_tensor(points, dtype=torch.float64).reshape(len(points), -1)
    # numpy's sort is ~3x faster than torch's on CPU here, and this sort is the metric's main cost
    return torch.from_numpy(np.sort((directions @ x.T).numpy(), axis=1))


def _quantiles(s: torch.Tensor, m: int) -> torch.Tensor:
    """m mid-point quantiles (i + 0.5) / m of each sorted row of s [P, n] -> [P, m], interpolated."""
    n = s.shape[1]
    if n == m:
        return s
    pos = ((torch.arange(m, dtype=torch.float64) + 0.5) * n / m - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = pos - lo
    return s[:, lo] * (1 - frac) + s[:, hi] * frac


def sliced_w2_sorted(sa: torch.Tensor, sb: torch.Tensor) -> float:
    """Sliced W2 from two sets of sorted projections [P, n_a] and [P, n_b] on the same directions."""
    m = min(sa.shape[1], sb.shape[1])
    return float(((_quantiles(sa, m) - _quantiles(sb, m)) ** 2).mean().sqrt())


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_directions: int = 256, seed: int = 0) -> float:
    """Sliced W2: sqrt(mean_theta W2^2(theta.a, theta.b)); 1-D W2 by matching sorted quantiles."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(len(a), -1)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"point sets of different dimension: {a.shape[1]} and {b.shape[1]}")
    dirs = random_directions(a.shape[1], n_directions, seed)
    return sliced_w2_sorted(sorted_projections(a, dirs), sorted_projections(b, dirs))


def log_joint(mixture, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """[N, K] log w_k + log N(x; mu_k, C_k): the one expensive quantity every metric below derives from."""
    x = torch.as_tensor(x, dtype=torch.float64)
    # GaussianMixture._terms is the mixture's own (shared-sigma, matrix-product) evaluation; reusing it
    # keeps one implementation of the Gaussian log-density
    return torch.cat([mixture._terms(x[s : s + chunk], 0.0, None)[0] for s in range(0, len(x), chunk)])


class MixtureMetrics:
    """Evaluates samples against one mixture; thresholds and reference histograms computed once.

    The reference is n_reference ground-truth draws of the full mixture (each with the class of the
    component it came from). Per class y, log p(x | y) = logsumexp_{k in y} log-joint - log p(y), the
    99%-mass threshold is the 1% quantile of log p(x | y) over the class's reference points (what
    `GaussianMixture.mass_threshold(cond=y)` estimates), and occupancy assigns each point to its most
    responsible component within the class.
    """

    def __init__(
        self,
        mixture,
        n_reference: int = 40_000,
        mass: float = 0.99,
        seed: int = 12345,
        n_directions: int = 256,
    ):
        self.mixture, self.mass = mixture, float(mass)
        g = torch.Generator().manual_seed(seed)
        ref, comp = mixture.sample(int(n_reference), generator=g)
        self.reference, self.reference_labels = ref, mixture.classes[comp]
        self.log_prior = torch.stack(
            [mixture.weights[mixture.classes == y].sum().log() for y in range(mixture.num_classes)]
        )
        stats = self._stats(ref)
        self.tau, self.occupancy, self.projected = {}, {}, {}
        self.directions = random_directions(mixture.dim, n_directions, seed)
        for y in [None, *range(mixture.num_classes)]:
            keep = slice(None) if y is None else self.reference_labels == y
            logp, assigned = stats[y]
            self.tau[y] = float(torch.quantile(logp[keep], 1 - self.mass))
            self.occupancy[y] = self._histogram(assigned[keep])
            self.projected[y] = sorted_projections(ref[keep], self.directions)

    def _histogram(self, assigned: torch.Tensor) -> torch.Tensor:
        k = len(self.mixture.weights)
        return torch.bincount(assigned, minlength=k).double() / max(1, len(assigned))

    def _stats(self, x: torch.Tensor) -> dict:
        """{None or y: (log p(x | y) [N], most responsible component within y [N])}."""
        lj = log_joint(self.mixture, x)
        out = {None: (torch.logsumexp(lj, 1), lj.argmax(1))}
        for y in range(self.mixture.num_classes):
            masked = lj.masked_fill(self.mixture.classes[None, :] != y, -math.inf)
            out[y] = (torch.logsumexp(masked, 1) - self.log_prior[y], masked.argmax(1))
        return out

    def _metrics(self, x, logp, assigned, y) -> dict[str, float]:
        finite = torch.isfinite(x).all(1)
        tv = 0.5 * (self._histogram(assigned) - self.occupancy[y]).abs().sum()
        return {
            "precision": float((logp >= self.tau[y]).double().mean()),
            "coverage": float(1 - tv),
            "mean_logp": float(logp.mean()),
            "sliced_w2": (
                sliced_w2_sorted(sorted_projections(x[finite], self.directions), self.projected[y])
                if bool(finite.any())
                else math.inf
            ),
            "n": len(x),
        }

    def evaluate(self, samples: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """Metrics overall (against p(x)) and, with labels, per class under 'per_class' (against p(x | y))."""
        x = torch.as_tensor(samples, dtype=torch.float64).reshape(len(samples), -1)
        stats = self._stats(x)
        out = self._metrics(x, *stats[None], None)
        if labels is not None:
            labels = torch.as_tensor(labels).long().reshape(-1)
            out["per_class"] = {}
            for y in range(self.mixture.num_classes):
                keep = labels == y
                if bool(keep.any()):
                    logp, assigned = stats[y]
                    name = self.mixture.class_names[y]
                    out["per_class"][name] = self._metrics(x[keep], logp[keep], assigned[keep], y)
        return out


def evaluate(samples: torch.Tensor, mixture, labels: torch.Tensor | None = None, **kwargs) -> dict:
    """precision, coverage, mean_logp, sliced_w2 overall and per class (see MixtureMetrics)."""
    return MixtureMetrics(mixture, **kwargs).evaluate(samples, labels)


def class_labels(mixture, n: int, seed: int = 0) -> torch.Tensor:
    """n labels [n] in the mixture's class proportions (a stratified, deterministic allocation)."""
    prior = torch.stack([mixture.weights[mixture.classes == y].sum() for y in range(mixture.num_classes)])
    counts = torch.floor(prior * n).long()
    counts[torch.argsort(prior * n - counts, descending=True)[: n - int(counts.sum())]] += 1
    labels = torch.repeat_interleave(torch.arange(mixture.num_classes), counts)
    g = torch.Generator().manual_seed(seed)
    return labels[torch.randperm(n, generator=g)]
