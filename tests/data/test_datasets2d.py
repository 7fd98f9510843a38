"""The built-in 2D data against their definitions: the tree's geometry, 8 Gaussians and the grid, and
the sample-only sets (two moons, checkerboard, S-curve, swiss roll) against scikit-learn's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffguide.data import make_dataset
from diffguide.data.points import checkerboard_points, moons_points, s_curve_points, swiss_roll_points
from diffguide.data.registry import DataConfig
from diffguide.mixtures import eight_gaussians, grid_mixture, tree_mixture

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# the tree (Karras et al. 2024's toy): components are listed segment by segment, per_segment in a row


def depth_levels(mixture) -> list[torch.Tensor]:
    """Component masks by weight level, heaviest first: in the tree each depth has its own weight."""
    levels = torch.unique(mixture.weights).flip(0)
    return [torch.isclose(mixture.weights, w, rtol=1e-12, atol=0) for w in levels]


def tree_origin(tree, per_segment: int = 6) -> torch.Tensor:
    """The two trunks' first components are at origin +- (0.5 / per_segment) * length * direction."""
    first_of_class_1 = int((tree.classes == 0).sum())
    return (tree.means[0] + tree.means[first_of_class_1]) / 2


def test_tree_classes_grow_in_opposite_directions_from_one_origin(tree):
    """The trunks are point reflections of each other through one origin (each pair of components at
    the same place along them has that midpoint), class 0 grows up-right and class 1 down-left, and the
    class means lie on opposite sides of the origin along the diagonal."""
    origin = tree_origin(tree)
    trunk = depth_levels(tree)[0]
    assert int(trunk.sum()) == 12
    a, b = tree.means[trunk & (tree.classes == 0)], tree.means[trunk & (tree.classes == 1)]
    torch.testing.assert_close((a + b) / 2, origin.expand(6, 2), rtol=0, atol=1e-12)
    diagonal = torch.tensor([1.0, 1.0], dtype=F64) / math.sqrt(2)
    along = (a - origin) / (a - origin).norm(dim=1, keepdim=True)
    torch.testing.assert_close(along, diagonal.expand(6, 2), rtol=0, atol=1e-12)  # up-right, straight
    for c, sign in ((0, 1), (1, -1)):
        keep = tree.classes == c
        mean = (tree.weights[keep, None] * tree.means[keep]).sum(0) / tree.weights[keep].sum()
        offset = mean - origin
        assert float(offset @ diagonal) * sign > 1.0  # measured 1.57 and -1.50
        assert float(offset @ diagonal) * sign / float(offset.norm()) > 0.99  # near the diagonal


def test_tree_weights_decrease_with_depth(tree):
    """Weights sum to 1, half per class; each depth has one weight, 0.62 times the previous one, twice
    as many components (6 per segment, two children per segment), and lies farther from the origin."""
    assert float(tree.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    for c in (0, 1):
        assert float(tree.weights[tree.classes == c].sum()) == pytest.approx(0.5, abs=1e-12)
    levels = depth_levels(tree)
    assert [int(k.sum()) for k in levels] == [12, 24, 48, 96, 192]  # depth 5: 2 classes x 6 x 2^level
    weights = torch.stack([tree.weights[k][0] for k in levels])
    torch.testing.assert_close(weights[1:] / weights[:-1], torch.full((4,), 0.62, dtype=F64))
    distance = [float((tree.means[k] - tree_origin(tree)).norm(dim=1).min()) for k in levels]
    assert distance == sorted(distance) and distance[1] > 0.9  # depth 1 starts past the 0.9-long trunk
    assert len(depth_levels(tree_mixture(depth=3))) == 3


def test_tree_components_are_thin_along_their_segments(tree):
    """Each segment (a row of 6 components) is straight and thin: its overall std along the row is >= 2.8
    times the std across (measured 3.0 .. 11, median 5.7); the components' std across shrinks with
    depth (0.028 x 0.8^depth). Components of the first three depths are elongated along their row:
    major/minor std >= 1.5 (measured 1.58 .. 2.95), major axis along the row. The deepest rows are
    short, so their components are rounder: 87% of the mass is in components elongated like this."""
    levels = depth_levels(tree)
    depth = torch.zeros(len(tree.weights), dtype=torch.long)
    for i, k in enumerate(levels):
        depth[k] = i
    eigenvalues, eigenvectors = torch.linalg.eigh(tree.covs)  # ascending
    ratio = (eigenvalues[:, 1] / eigenvalues[:, 0]).sqrt()
    elongated = torch.zeros(len(tree.weights), dtype=torch.bool)
    for start in range(0, len(tree.weights), 6):
        rows = slice(start, start + 6)
        mu, cov = tree.means[rows], tree.covs[rows]
        assert len(set(depth[rows].tolist())) == 1
        direction = (mu[-1] - mu[0]) / (mu[-1] - mu[0]).norm()
        normal = torch.stack([-direction[1], direction[0]])
        assert float(((mu - mu[0]) @ normal).abs().max()) < 1e-12  # straight
        # the row as a whole: covariance of the equal-weight mixture of its components
        centred = mu - mu.mean(0)
        total = cov.mean(0) + (centred[:, :, None] * centred[:, None, :]).mean(0)
        assert float(direction @ total @ direction) >= 8 * float(normal @ total @ normal)
        across = (normal @ cov @ normal).sqrt()  # [6]
        torch.testing.assert_close(across, torch.full_like(across, 0.028 * 0.8 ** int(depth[start])))
        aligned = (eigenvectors[rows, :, 1] @ direction).abs() > 1 - 1e-9
        elongated[rows] = aligned & (ratio[rows] >= 1.5)
    assert bool(elongated[depth <= 2].all())
    assert float(tree.weights[elongated].sum()) > 0.85


# ---------------------------------------------------------------------------------------------
# 8 Gaussians and the grid


def assert_modes_at(mixture, places: torch.Tensor, std: float):
    """Components exactly at `places` (as a set), isotropic with `std`, equal weights; and each place is
    a mode of the density: the score vanishes there and the density is e^2 times higher or more than
    halfway to the nearest other place (distinct modes)."""
    k = len(places)
    assert mixture.means.shape == (k, 2)
    order = lambda p: p[np.lexsort(np.round(p.numpy(), 9).T)]  # noqa: E731
    torch.testing.assert_close(order(mixture.means), order(places), rtol=0, atol=1e-12)
    torch.testing.assert_close(mixture.covs, (std**2 * torch.eye(2, dtype=F64)).expand(k, 2, 2))
    torch.testing.assert_close(mixture.weights, torch.full((k,), 1 / k, dtype=F64))
    score = mixture.score(places)
    assert float(score.abs().max()) * std < 1e-6  # in units of 1 / std: zero
    gaps = torch.cdist(places, places) + torch.eye(k, dtype=F64) * 1e9
    halfway = (places + places[gaps.argmin(1)]) / 2
    assert bool((mixture.log_prob(places) > mixture.log_prob(halfway) + 2).all())


def test_eight_gaussians_are_on_a_circle():
    for radius, std in ((2.0, 0.08), (1.0, 0.1)):
        angles = torch.arange(8, dtype=F64) * math.pi / 4
        places = radius * torch.stack([angles.cos(), angles.sin()], 1)
        mixture = eight_gaussians(radius, std)
        assert_modes_at(mixture, places, std)
        assert torch.equal(mixture.classes, torch.arange(8))  # one class per mode


@pytest.mark.parametrize(("size", "spacing", "std"), [(5, 1.0, 0.05), (3, 0.5, 0.04)])
def test_grid_is_a_centred_lattice(size, spacing, std):
    coords = [(i - (size - 1) / 2) * spacing for i in range(size)]
    places = torch.tensor([[a, b] for a in coords for b in coords], dtype=F64)
    mixture = grid_mixture(size, spacing, std)
    assert_modes_at(mixture, places, std)
    assert mixture.num_classes == 1


# ---------------------------------------------------------------------------------------------
# sample-only sets


def fit_circle(points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares circle (Kasa fit): centre, radius and each point's distance to the circle."""
    a = np.column_stack([2 * points, np.ones(len(points))])
    solution = np.linalg.lstsq(a, (points**2).sum(1), rcond=None)[0]
    centre = solution[:2]
    radius = math.sqrt(solution[2] + centre @ centre)
    return centre, radius, np.linalg.norm(points - centre, axis=1) - radius


def test_two_moons_are_sklearns_half_circles():
    """scikit-learn's moons: the upper half of the unit circle about (0, 0) (label 0) and the lower half
    of the unit circle about (1, 0.5) (label 1), n/2 each, then shifted to mean 0 and divided by one
    number. So in our coordinates both are half circles of one radius r whose centres differ by
    r (1, 0.5); with noise, points scatter about them with std noise * r. (The divisor is the std of all
    raw values pooled around their overall mean, so the std is a little below 1: 0.985 here.)"""
    x, y = moons_points(2000, seed=3, noise=0.0)
    assert x.shape == (2000, 2) and np.bincount(y).tolist() == [1000, 1000]
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-12)
    assert 0.95 < x.std() <= 1
    (c0, r0, d0), (c1, r1, d1) = fit_circle(x[y == 0]), fit_circle(x[y == 1])
    assert max(abs(d0).max(), abs(d1).max()) < 1e-9 and r0 == pytest.approx(r1, rel=1e-9)
    np.testing.assert_allclose(c1 - c0, r0 * np.array([1.0, 0.5]), atol=1e-9)
    assert (x[y == 0, 1] >= c0[1] - 1e-9).all() and (x[y == 1, 1] <= c1[1] + 1e-9).all()
    for points, centre, sign in ((x[y == 0], c0, 1), (x[y == 1], c1, -1)):  # the whole half circle
        angle = np.arctan2(sign * (points[:, 1] - centre[1]), points[:, 0] - centre[0])
        angle = np.where(angle < -math.pi / 2, angle + 2 * math.pi, angle)  # the end at pi may read as -pi
        assert angle.min() == pytest.approx(0, abs=1e-9) and angle.max() == pytest.approx(math.pi, abs=1e-9)
    noisy, y = moons_points(4000, seed=3, noise=0.05)
    clean_radius = fit_circle(moons_points(4000, seed=3, noise=0.0)[0][y == 0])[1]
    assert fit_circle(noisy[y == 0])[2].std() == pytest.approx(0.05 * clean_radius, rel=0.1)


def test_checkerboard_points_lie_on_dark_squares():
    """Uniform on the squares (i, j) with i + j even of a board over [-2, 2]^2, divided by sqrt(4/3) (the
    std of U(-2, 2)) so that each coordinate has std ~1: after undoing the scale, every point is in a
    dark square, each dark square holds its share (binomial, 5 standard errors) and its points are
    centred in it."""
    for squares, n in ((4, 16_000), (3, 9_000)):
        p = checkerboard_points(n, seed=1, squares=squares) * math.sqrt(4 / 3)
        assert p.shape == (n, 2) and np.abs(p).max() <= 2
        cell = np.floor((p + 2) / (4 / squares)).astype(int)
        assert ((cell.sum(1) % 2) == 0).all()
        dark = [(i, j) for i in range(squares) for j in range(squares) if (i + j) % 2 == 0]
        share = 1 / len(dark)
        for i, j in dark:
            inside = (cell[:, 0] == i) & (cell[:, 1] == j)
            assert abs(inside.mean() - share) < 5 * math.sqrt(share * (1 - share) / n)
            centre = -2 + (np.array([i, j]) + 0.5) * 4 / squares
            side = 4 / squares  # uniform on a side: mean error std side / sqrt(12 m)
            assert np.abs(p[inside].mean(0) - centre).max() < 5 * side / math.sqrt(12 * inside.sum())


def sklearn_curve(name: str, n: int, seed: int, noise: float) -> np.ndarray:
    """The noise-free 2D curve at scikit-learn's own positions t for that seed: S-curve (sin t,
    sign(t)(cos t - 1)) for t in 3 pi [-1/2, 1/2]; swiss roll (t cos t, t sin t) for t in 1.5 pi [1, 3]."""
    from sklearn.datasets import make_s_curve, make_swiss_roll

    if name == "scurve":
        t = make_s_curve(n, noise=noise, random_state=seed)[1]
        assert t.min() >= -1.5 * math.pi and t.max() <= 1.5 * math.pi
        return np.column_stack([np.sin(t), np.sign(t) * (np.cos(t) - 1)])
    t = make_swiss_roll(n, noise=noise, random_state=seed)[1]
    assert t.min() >= 1.5 * math.pi and t.max() <= 4.5 * math.pi
    return np.column_stack([t * np.cos(t), t * np.sin(t)])


@pytest.mark.parametrize(("name", "noise"), [("scurve", 0.1), ("swissroll", 0.3)])
def test_s_curve_and_swiss_roll_are_sklearns_curves_seen_from_the_side(name, noise):
    """Our points are scikit-learn's generator viewed along its y axis (coordinates x and z), scaled by
    one number and shifted: a least-squares fit points = a * curve(t) + b is exact without noise (the
    (x, y) view or another seed would leave a residual) and leaves noise * a per coordinate with it."""
    points_fn = {"scurve": s_curve_points, "swissroll": swiss_roll_points}[name]
    for level in (0.0, noise):
        points = points_fn(3000, seed=2, noise=level)
        curve = sklearn_curve(name, 3000, seed=2, noise=level)
        design = np.column_stack([curve.reshape(-1), np.tile(np.eye(2), (3000, 1))])  # [a, b_x, b_y]
        coef, *_ = np.linalg.lstsq(design, points.reshape(-1), rcond=None)
        residual = points.reshape(-1) - design @ coef
        assert coef[0] > 0 and abs(points.mean(0)).max() < 1e-12 and 0.95 < points.std() <= 1  # 0.994, 0.9996
        if level == 0:
            assert np.abs(residual).max() < 1e-9
        else:
            assert residual.std() == pytest.approx(level * coef[0], rel=0.1)


@pytest.mark.parametrize("name", ["scurve", "moons", "swissroll", "checkerboard"])
def test_registered_sets_use_these_generators(name):
    """The names the CLI accepts build their point clouds with the functions tested above."""
    dataset = make_dataset(DataConfig(name=name, size=500, seed=4))
    expected = {
        "scurve": lambda: s_curve_points(500, 4),
        "moons": lambda: moons_points(500, 4)[0],
        "swissroll": lambda: swiss_roll_points(500, 4),
        "checkerboard": lambda: checkerboard_points(500, 4),
    }[name]()
    assert torch.equal(dataset.points, torch.as_tensor(expected, dtype=torch.float32))
