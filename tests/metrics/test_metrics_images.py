"""Image metrics against known answers: FID closed forms, KID, precision/recall, conditional accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffguide.errors import ConfigError
from diffguide.metrics.images import (
    conditional_accuracy,
    fid,
    frechet_distance,
    inception_fid,
    kid,
    precision_recall,
)


def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16))
    assert fid(f, f) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_forms():
    # 1D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # diagonal covariances: |dmu|^2 + sum (a + b - 2 sqrt(a b))
    a, b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.5, 0.5])
    mu1, mu2 = np.zeros(3), np.array([1.0, -1.0, 2.0])
    expected = 6 + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # rotation invariance: the same pair of Gaussians in rotated coordinates
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_fid_of_samples_matches_the_closed_form():
    rng = np.random.default_rng(2)
    cov = np.array([[1.0, 0.5], [0.5, 2.0]])
    x = rng.multivariate_normal([0, 0], cov, size=40000)
    y = rng.multivariate_normal([1, 0], np.eye(2) * 0.5, size=40000)
    assert fid(x, y) == pytest.approx(frechet_distance([0, 0], cov, [1, 0], np.eye(2) * 0.5), rel=0.05)


def test_kid_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    assert abs(kid(a, b, subsets=20, subset_size=300)) < 0.02
    assert kid(a, b + 1.0, subsets=20, subset_size=300) > 0.5


def test_precision_recall_known_answers():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 4))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    # fakes collapsed onto one real point: perfect precision, recall of a few points only
    p, r = precision_recall(x, np.repeat(x[:1], 50, 0) + 1e-9 * rng.normal(size=(50, 4)))
    assert p == 1.0 and r < 0.05


def test_conditional_accuracy():
    pred = {"class": torch.tensor([1, 2, 3, 3])}
    assert conditional_accuracy(pred, torch.tensor([1, 2, 3, 0])) == {"accuracy": 0.75}
    assert conditional_accuracy(pred, 3) == {"accuracy": 0.5}
    pred = {"type": torch.tensor([0, 1, 1]), "accessories": torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0]])}
    cond = {
        "type": torch.tensor([0, 1, -1]),
        "accessories": torch.tensor([[1.0, 0, 0], [1, 0, 0], [-1, -1, -1]]),
    }
    out = conditional_accuracy(pred, cond, ["a", "b", "c"])
    assert out["type_accuracy"] == 1.0  # the null type is not counted
    assert out["accessory_recall"] == 1.0 and out["accessories_exact"] == 0.5
    assert out["per_accessory"] == {"a": 1.0}


def test_inception_fid_explains_what_is_missing():
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is not None:
        pytest.skip("torch-fidelity is installed here")
    with pytest.raises(ConfigError, match="torch-fidelity"):
        inception_fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


def test_w_sweep_plot_draws_one_curve_per_guidance(tmp_path):
    from PIL import Image

    from diffguide.plots.images import save_w_sweep_plot

    rows = [
        {"guidance": g, "w": w, "accuracy": a, "fid_digits_clf": f}
        for g, points in {
            "cfg": [(1, 0.9, 2.0), (2, 0.99, 3.0)],
            "auto": [(1, 0.9, 2.0), (2, 0.92, 1.2)],
        }.items()
        for w, a, f in points
    ]
    path = save_w_sweep_plot(tmp_path / "sweep.png", rows, ["accuracy", "fid_digits_clf"], title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(path).convert("RGB")
    assert img.size == (int(3.2 * 2 * 110), 3 * 110)  # one 3.2 x 3 inch panel per metric at 110 dpi
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert (0x1F, 0x77, 0xB4) in colours and (0xFF, 0x7F, 0x0E) in colours  # matplotlib's C0, C1: two curves
    only_cfg = save_w_sweep_plot(tmp_path / "cfg.png", rows[:2], ["accuracy"])
    assert (0xFF, 0x7F, 0x0E) not in {c for _, c in Image.open(only_cfg).convert("RGB").getcolors(1 << 20)}


def test_labelled_grids_stack_one_titled_row_per_condition(tmp_path):
    from PIL import Image

    from diffguide.plots.images import save_labelled_grids

    x = torch.rand(3, 3, 24, 24) * 2 - 1
    one = Image.open(save_labelled_grids(tmp_path / "one.png", [("--type female", x)]))
    two = Image.open(save_labelled_grids(tmp_path / "two.png", [("--type female", x), ("--type male", x)]))
    assert one.width == two.width and two.height > 1.8 * one.height
    with pytest.raises(ConfigError, match="no rows"):
        save_labelled_grids(tmp_path / "none.png", [])


def test_attribute_evaluations_ask_for_training_punks_never_the_held_out_reference():
    """The held-out images are the reference of FID/precision/recall; conditions copied from them would let
    samples nearly copy the reference. reference_index draws from the training split, seeded, cycling."""
    from types import SimpleNamespace

    from diffguide.plots.images import reference_index

    ds = SimpleNamespace(train_index=torch.arange(0, 30, 3), test_index=torch.arange(1, 30, 3))
    idx = reference_index(ds, 25)
    assert set(idx.tolist()) == set(ds.train_index.tolist())  # all 10 training examples, none held out
    assert torch.equal(idx[:10], idx[10:20]) and torch.equal(idx[20:], idx[:5])  # one fixed order, cycled
    assert torch.equal(idx, reference_index(ds, 25))
