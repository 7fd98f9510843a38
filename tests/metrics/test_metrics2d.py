"""Exact mixture metrics against answers known independently of the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffguide.metrics.points import (
    MixtureMetrics,
    class_labels,
    coverage,
    evaluate,
    mean_logp,
    occupancy,
    precision,
    random_directions,
    sliced_w2,
)
from diffguide.mixtures import GaussianMixture, eight_gaussians


@pytest.fixture(scope="module")
def eight():
    return eight_gaussians()


@pytest.fixture(scope="module")
def eight_metrics(eight):
    return MixtureMetrics(eight, n_reference=20_000)


def test_ground_truth_samples_score_ideal(eight, eight_metrics):
    x, comp = eight.sample(8000, generator=torch.Generator().manual_seed(1))
    r = eight_metrics.evaluate(x, eight.classes[comp])
    # precision ~ 0.99 within the binomial spread (sd ~ 0.0011 for n = 8000)
    assert abs(r["precision"] - 0.99) < 0.005
    # 8 well-separated components: occupancy histograms of two true samples differ only by noise
    assert r["coverage"] > 0.97
    # W2 between two finite samples of separated modes is dominated by the proportion noise (a little
    # mass moved across the circle), ~0.1 here; a sample of one mode only is ~20x further
    assert r["sliced_w2"] < 0.15
    one = eight.subset(torch.tensor([0])).sample(8000, generator=torch.Generator().manual_seed(9))[0]
    assert eight_metrics.evaluate(one)["sliced_w2"] > 10 * r["sliced_w2"]
    for per in r["per_class"].values():  # each class is one component: perfect coverage
        assert per["coverage"] == pytest.approx(1.0)


def test_one_component_only_has_the_coverage_computed_by_hand(eight, eight_metrics):
    """All samples in component 0 -> occupancy (1, 0, ..., 0); 1 - TV = min(1, q_0) = q_0, the
    reference's share of component 0 (1/8 up to sampling noise)."""
    sub = eight.subset(torch.tensor([0]))
    x, _ = sub.sample(3000, generator=torch.Generator().manual_seed(2))
    r = eight_metrics.evaluate(x)
    q0 = float(eight_metrics.occupancy[None][0])
    assert r["coverage"] == pytest.approx(q0, abs=1e-12)
    assert q0 == pytest.approx(1 / 8, abs=0.01)
    # the points are genuine samples of a component, so precision stays ~0.99 overall ...
    assert r["precision"] > 0.97
    # ... and per class: every point has class 0, which is fully covered
    r = eight_metrics.evaluate(x, torch.zeros(len(x), dtype=torch.long))
    assert r["per_class"]["0"]["coverage"] == pytest.approx(1.0)


def test_standalone_functions_agree_with_the_batched_evaluator(eight, eight_metrics):
    x, comp = eight.sample(2000, generator=torch.Generator().manual_seed(3))
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    r = eight_metrics.evaluate(x)
    assert precision(x, eight, tau=eight_metrics.tau[None]) == r["precision"]
    assert coverage(x, eight, eight_metrics.reference) == pytest.approx(r["coverage"], abs=1e-12)
    assert mean_logp(x, eight) == pytest.approx(r["mean_logp"], rel=1e-10)
    assert float(eight.log_prob(x).mean()) == pytest.approx(r["mean_logp"], rel=1e-10)
    # the threshold is the mixture's own 99%-mass level (Monte Carlo: agree to sampling error)
    assert eight_metrics.tau[None] == pytest.approx(eight.mass_threshold(0.99, n=100_000), abs=0.1)
    assert torch.equal(occupancy(eight.means, eight), torch.full((8,), 1 / 8, dtype=torch.float64))


def test_precision_counts_points_inside_the_region():
    m = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2)])
    # for one standard Gaussian the 99%-mass region is the disc |x|^2 <= chi2_2(0.99) = -2 ln 0.01
    r99 = math.sqrt(-2 * math.log(0.01))
    inside = torch.tensor([[0.0, 0.0], [r99 * 0.97, 0.0], [0.0, -r99 * 0.97]])
    outside = torch.tensor([[r99 * 1.03, 0.0], [5.0, 5.0]])
    tau = -0.5 * r99**2 - math.log(2 * math.pi)  # log N at the boundary
    assert precision(torch.cat([inside, outside]), m, tau=tau) == pytest.approx(3 / 5)
    assert m.mass_threshold(0.99, n=200_000) == pytest.approx(tau, abs=0.05)


def test_sliced_w2_of_a_shift_is_exact():
    """Shifting a point set by c moves every sorted projection by theta.c: SW2^2 = mean (theta.c)^2."""
    a = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    dirs = random_directions(3, 64, seed=5)
    expected = float(((dirs @ c) ** 2).mean().sqrt())
    assert sliced_w2(a, a + c, n_directions=64, seed=5) == pytest.approx(expected, rel=1e-10)
    # in 1-D it is the plain W2 between the two empirical distributions: |c|
    b = a[:, :1]
    assert sliced_w2(b, b - 0.7) == pytest.approx(0.7, rel=1e-10)
    assert sliced_w2(a, a) == 0.0


def test_sliced_w2_of_two_gaussians_matches_the_closed_form():
    """N(m1, s1^2 I) vs N(m2, s2^2 I) in 2-D: W2^2 along theta = (theta.dm)^2 + (s1 - s2)^2, whose mean
    over uniform directions is |dm|^2 / 2 + (s1 - s2)^2."""
    g = torch.Generator().manual_seed(7)
    n = 20_000
    m1, m2, s1, s2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5]), 1.0, 0.4
    a = (m1 + s1 * torch.randn(n, 2, generator=g)).double()
    b = (m2 + s2 * torch.randn(n, 2, generator=g)).double()
    closed = math.sqrt(float((m2 - m1).pow(2).sum()) / 2 + (s1 - s2) ** 2)
    assert sliced_w2(a, b, n_directions=256) == pytest.approx(closed, rel=0.03)
    # unequal sample sizes: quantiles of the larger set are interpolated
    assert sliced_w2(a[:3000], b, n_directions=256) == pytest.approx(closed, rel=0.04)


def test_class_labels_follow_the_class_proportions(tree):
    labels = class_labels(tree, 1001, seed=0)
    prior = [float(tree.weights[tree.classes == y].sum()) for y in range(2)]
    counts = torch.bincount(labels, minlength=2).tolist()
    assert sum(counts) == 1001 and all(abs(c - p * 1001) <= 1 for c, p in zip(counts, prior))
    assert torch.equal(labels, class_labels(tree, 1001, seed=0))


def test_evaluate_reports_every_metric_per_class(tree):
    x, comp = tree.sample(1000, generator=torch.Generator().manual_seed(0))
    r = evaluate(x, tree, tree.classes[comp], n_reference=5000)
    for scope in (r, *r["per_class"].values()):
        assert set(scope) >= {"precision", "coverage", "mean_logp", "sliced_w2", "n"}
    assert set(r["per_class"]) == {"A", "B"}
    assert r["per_class"]["A"]["n"] + r["per_class"]["B"]["n"] == 1000
    # non-finite samples count as imprecise, not as a crash
    bad = x.clone()
    bad[:10] = float("nan")
    assert evaluate(bad, tree, n_reference=5000)["precision"] < r["precision"]
