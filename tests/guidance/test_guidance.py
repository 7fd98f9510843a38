"""Guidance combinators against known answers: the formula, Bayes' rule, intervals, and the science.

The science tests use exact denoisers with controlled imperfections, so they are fast and
deterministic: the "expert" is the ground-truth mixture with covariances inflated a little, the
"amateur" with covariances inflated more (a blurred expert), as in Karras et al. 2024's analysis.
The same science on trained models (at reduced size) is checked in tests/study/test_study.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffguide.classifiers.points import ExactClassifier
from diffguide.cli import main
from diffguide.denoiser import FunctionDenoiser
from diffguide.errors import ConfigError
from diffguide.guidance import (
    Guided,
    NullConditioned,
    autoguidance,
    cfg_and_autoguidance,
    check_interval,
    check_weight,
    classifier_free_guidance,
    classifier_guidance,
    convert_weight,
    guidance,
)
from diffguide.metrics.points import MixtureMetrics, class_labels
from diffguide.mixtures import GaussianMixture, tree_mixture
from diffguide.samplers.generation import generate, sigma_grid


def blurred(mixture: GaussianMixture, s: float) -> GaussianMixture:
    """The mixture with every covariance inflated by s^2 I: a deliberately blurry model of it."""
    eye = torch.eye(mixture.dim, dtype=torch.float64)
    return GaussianMixture(mixture.weights, mixture.means, mixture.covs + s**2 * eye, mixture.classes)


def checkerboard(size: int = 4, std: float = 0.1) -> GaussianMixture:
    """size x size Gaussians on a unit grid, classes alternating like a checkerboard (overlap when blurred)."""
    coords = np.arange(size) - (size - 1) / 2
    means = np.stack(np.meshgrid(coords, coords), -1).reshape(-1, 2)
    classes = (np.arange(size)[:, None] + np.arange(size)[None, :]).reshape(-1) % 2
    covs = np.tile(np.eye(2) * std**2, (len(means), 1, 1))
    return GaussianMixture(np.ones(len(means)), means, covs, classes)


@pytest.fixture(scope="module")
def board():
    return checkerboard()


def _points(n=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=dtype) * 1.5
    sigma = torch.exp(torch.randn(n, generator=g, dtype=dtype))  # per-sample noise levels
    cond = torch.randint(0, 2, (n,), generator=g)
    return x, sigma, cond


# ---------------------------------------------------------------------------------------------
# the formula


def test_combinator_is_exactly_guide_plus_w_times_difference(board):
    main, guide = board, blurred(board, 0.3)  # ground truth as main, a deliberately blurred one as guide
    x, sigma, cond = _points()
    for w in (0.0, 0.5, 2.0, 3.7):
        out = guidance(main, guide, w)(x, sigma, cond)
        g, m = guide(x, sigma, cond), main(x, sigma, cond)
        assert torch.equal(out, g + w * (m - g))
    # w = 1 is no guidance: the main denoiser itself
    assert torch.equal(guidance(main, guide, 1.0)(x, sigma, cond), main(x, sigma, cond))


def test_any_tensor_rank_and_plain_callables():
    """[N, C, H, W] images and plain functions go through the same code as [N, 2] points."""

    def main(x, sigma, cond=None):
        return x / (1 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2)

    def guide(x, sigma, cond=None):
        return 0.5 * x

    x = torch.randn(3, 2, 4, 5)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    out = guidance(main, guide, 2.5, interval=(0.5, 5.0))(x, sigma)
    full = guide(x, sigma) + 2.5 * (main(x, sigma) - guide(x, sigma))
    assert out.shape == x.shape
    assert torch.equal(out[1], full[1])  # sigma = 1 inside the interval
    assert torch.equal(out[0], main(x, sigma)[0]) and torch.equal(out[2], main(x, sigma)[2])
    # a FunctionDenoiser (nn.Module) works as well, with a scalar sigma
    wrapped = guidance(FunctionDenoiser(main), FunctionDenoiser(guide), 2.0)
    assert wrapped(x, 0.7).shape == x.shape


def test_interval_empty_is_no_guidance_and_everything_is_full_guidance(board):
    main, guide = blurred(board, 0.05), blurred(board, 0.3)
    x, sigma, cond = _points()
    plain = main(x, sigma, cond)
    full = guidance(main, guide, 3.0)(x, sigma, cond)
    calls = []

    def counting_guide(x, sigma, cond=None):
        calls.append(1)
        return guide(x, sigma, cond)

    for empty in ((5.0, 1.0), (1e6, 2e6), (0.0, 0.0)):  # lo > hi, above every sigma, a point nobody hits
        assert torch.equal(guidance(main, counting_guide, 3.0, interval=empty)(x, sigma, cond), plain)
    assert not calls  # the guide is not even evaluated
    everything = (0.0, float(sigma.max()) * 2)
    assert torch.equal(guidance(main, guide, 3.0, interval=everything)(x, sigma, cond), full)
    # a proper sub-interval guides exactly the samples whose sigma lies in it
    lo, hi = 0.5, 2.0
    part = guidance(main, guide, 3.0, interval=(lo, hi))(x, sigma, cond)
    inside = (sigma >= lo) & (sigma <= hi)
    assert 0 < int(inside.sum()) < len(x)
    assert torch.equal(part[inside], full[inside]) and torch.equal(part[~inside], plain[~inside])


def test_two_guides_add_their_differences(board):
    main, amateur = blurred(board, 0.05), blurred(board, 0.3)
    x, sigma, cond = _points()
    out = cfg_and_autoguidance(main, amateur, 2.0, 1.5, 2)(x, sigma, cond)
    d1, d0, dnull = main(x, sigma, cond), amateur(x, sigma, cond), main(x, sigma, torch.full_like(cond, 2))
    torch.testing.assert_close(out, d1 + 1.0 * (d1 - d0) + 0.5 * (d1 - dnull), rtol=0, atol=1e-12)
    # with the CFG weight at 1 it is plain autoguidance
    torch.testing.assert_close(
        cfg_and_autoguidance(main, amateur, 2.0, 1.0, 2)(x, sigma, cond),
        autoguidance(main, amateur, 2.0)(x, sigma, cond),
        rtol=0,
        atol=1e-12,
    )


def test_rescale_matches_the_main_models_noise_std(board):
    main, guide = blurred(board, 0.05), blurred(board, 0.3)
    x, sigma, cond = _points()
    plain = guidance(main, guide, 4.0)(x, sigma, cond)
    assert torch.equal(guidance(main, guide, 4.0, rescale=0.0)(x, sigma, cond), plain)
    out = guidance(main, guide, 4.0, rescale=1.0)(x, sigma, cond)
    s = sigma[:, None]
    eps, eps_main = (x - out) / s, (x - main(x, sigma, cond)) / s
    torch.testing.assert_close(eps.std(1), eps_main.std(1))
    with pytest.raises(ConfigError, match="rescale"):
        guidance(main, guide, 2.0, rescale=1.5)


# ---------------------------------------------------------------------------------------------
# CFG and classifier guidance: Bayes' rule gives the known answers


def test_cfg_guide_is_the_null_condition(board):
    x, sigma, cond = _points()
    null = NullConditioned(board, 2)(x, sigma, cond)
    assert torch.equal(null, board(x, sigma, torch.full_like(cond, 2)))
    assert torch.equal(null, board(x, sigma, None))  # the null class means unconditional
    out = classifier_free_guidance(board, 3.0, 2)(x, sigma, cond)
    assert torch.equal(out, null + 3.0 * (board(x, sigma, cond) - null))
    with pytest.raises(ConfigError, match="class-conditional"):
        classifier_free_guidance(board, 2.0, 0)


def test_exact_classifier_guidance_is_bayes(tree):
    """grad log p(y|x) added with scale 1 to the exact unconditional denoiser gives the exact
    conditional one; with scale w it equals exact CFG at w (D(x|y) - D(x) = sigma^2 grad log p(y|x))."""
    x, sigma, cond = _points(48, seed=3)
    x = x * 0.6
    uncond = NullConditioned(tree, 2)
    clf = ExactClassifier(tree)
    one = classifier_guidance(uncond, clf, 1.0)(x, sigma, cond)
    torch.testing.assert_close(one, tree(x, sigma, cond), rtol=1e-6, atol=1e-8)
    three = classifier_guidance(uncond, clf, 3.0)(x, sigma, cond)
    torch.testing.assert_close(
        three, classifier_free_guidance(tree, 3.0, 2)(x, sigma, cond), rtol=1e-6, atol=1e-8
    )
    # the Bayes classifier's posterior is the class-summed responsibilities
    resp = tree.responsibilities(x, sigma)
    post = torch.stack([resp[:, tree.classes == y].sum(1) for y in range(2)], 1)
    torch.testing.assert_close(torch.softmax(clf(x, sigma), 1), post)


def test_classifier_guidance_needs_labels_and_skips_null_labels(board):
    clf = ExactClassifier(board)
    x, sigma, cond = _points(8)
    with pytest.raises(ConfigError, match="class labels"):
        classifier_guidance(board, clf, 2.0)(x, sigma, None)
    null = torch.full_like(cond, 2)
    assert torch.equal(classifier_guidance(board, clf, 2.0)(x, sigma, null), board(x, sigma, null))


def test_weights_intervals_and_conventions_are_checked():
    assert check_weight(0) == 0.0 and check_weight(3) == 3.0
    for bad in (-0.5, float("nan")):
        with pytest.raises(ConfigError, match=r"must be >= 0 \(1 = no guidance\)"):
            check_weight(bad)
    with pytest.raises(ConfigError, match="must be >= 0"):
        Guided(lambda x, s, c=None: x, [(lambda x, s, c=None: x, -1.0)])
    assert check_interval(None) is None and check_interval([0.1, 2]) == (0.1, 2.0)
    with pytest.raises(ConfigError, match="bounds must be >= 0"):
        check_interval((-1.0, 2.0))
    # Ho & Salimans' w' = our w - 1; diffusers' guidance_scale is our w
    assert convert_weight(2.0, "ho-salimans") == 3.0
    assert convert_weight(7.5, "diffusers") == 7.5
    with pytest.raises(ConfigError, match="did you mean 'diffusers'"):
        convert_weight(2.0, "difusers")


# ---------------------------------------------------------------------------------------------
# the expected science, with exact denoisers and controlled imperfections


def _sweep(mixture, denoisers: dict, n: int = 800, steps: int = 16) -> dict:
    metrics = MixtureMetrics(mixture, n_reference=10_000)
    labels = class_labels(mixture, n)
    sigmas = sigma_grid("karras", steps, sigma_min=0.002, sigma_max=10.0)
    out = {}
    for name, d in denoisers.items():
        x = generate(d, n, (2,), sigmas=sigmas, cond=labels, seed=0, dtype=torch.float64)
        out[name] = metrics.evaluate(x, labels)
    return out


def test_autoguidance_sharpens_without_losing_variety_and_cfg_does_lose_it(board):
    """Measured: expert 0.77 precision / 0.956 coverage; autoguidance w=2: 0.96 / 0.956;
    CFG w=3: 0.92 / 0.91 (autoguidance reaches higher precision with no coverage loss)."""
    expert, amateur = blurred(board, 0.15), blurred(board, 0.3)
    r = _sweep(
        board,
        {
            "none": expert,
            "auto": autoguidance(expert, amateur, 2.0),
            "cfg": classifier_free_guidance(expert, 3.0, 2),
        },
    )
    none, auto, cfg = r["none"], r["auto"], r["cfg"]
    assert auto["precision"] > none["precision"] + 0.1
    assert abs(auto["coverage"] - none["coverage"]) < 0.02
    assert cfg["precision"] > none["precision"] + 0.1  # CFG at high w raises precision ...
    assert cfg["coverage"] < none["coverage"] - 0.03  # ... and loses coverage
    # at (at least) equal precision autoguidance keeps clearly more coverage
    assert auto["precision"] >= cfg["precision"] and auto["coverage"] > cfg["coverage"] + 0.03


def test_autoguidance_on_the_tree_recovers_precision(tree):
    """docs/guidance.md's toy: a blurred expert guided by a blurrier amateur gets most of the way back to
    the true precision (measured 0.81 -> 0.97 at w=2) with coverage within 0.03."""
    expert, amateur = blurred(tree, 0.03), blurred(tree, 0.08)
    r = _sweep(tree, {"none": expert, "auto": autoguidance(expert, amateur, 2.0)}, n=500)
    assert r["auto"]["precision"] > r["none"]["precision"] + 0.1
    assert abs(r["auto"]["coverage"] - r["none"]["coverage"]) < 0.03
    assert r["auto"]["mean_logp"] > r["none"]["mean_logp"]


def test_cfg_on_the_tree_needs_an_exact_main_model(tree):
    """docs/guidance.md's explanation of why CFG lowers precision on the trained tree: with the exact tree as
    main CFG keeps precision at ~0.99 (its classes barely overlap, so p(c | x)^(w-1) changes little on
    the data), but with a slightly blurred main (+0.03^2 I, like a trained expert) it pushes samples
    away from the other class, out beyond the thin branch tips, and precision falls.
    Measured (n = 500): exact 0.994 -> CFG w=3 0.986; blurred 0.842 -> CFG w=2 0.822, w=3 0.804."""
    soft = blurred(tree, 0.03)
    r = _sweep(
        tree,
        {
            "exact": tree,
            "exact cfg": classifier_free_guidance(tree, 3.0, 2),
            "blurred": soft,
            "blurred cfg2": classifier_free_guidance(soft, 2.0, 2),
            "blurred cfg3": classifier_free_guidance(soft, 3.0, 2),
        },
        n=500,
    )
    assert r["exact"]["precision"] > 0.98 and r["exact cfg"]["precision"] > 0.97
    assert r["blurred cfg2"]["precision"] < r["blurred"]["precision"]
    assert r["blurred cfg3"]["precision"] < r["blurred cfg2"]["precision"]


# ---------------------------------------------------------------------------------------------
# label dropout: per sample, inside the real training loop


def test_label_dropout_is_per_sample_in_the_training_loop(monkeypatch, tmp_path):
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import batches, loop

    seen = []
    original = batches.drop_condition

    def recording(labels, num_classes, p, generator):
        out = original(labels, num_classes, p, generator)
        seen.append((labels.clone(), out.clone(), num_classes, p))
        return out

    monkeypatch.setattr(batches, "drop_condition", recording)
    cfg = apply_overrides(
        load_preset("tiny"),
        ["train.steps=4", "train.batch_size=2000", "train.p_uncond=0.1", "train.ckpt_every=4", "sample.n=10"],
    )
    loop.train(cfg, tmp_path / "run", progress=False)
    assert len(seen) == 4
    for before, after, k, p in seen:
        assert k == 2 and p == 0.1
        dropped = after == k
        assert torch.equal(after[~dropped], before[~dropped])  # the others keep their label
        frac = float(dropped.float().mean())
        assert 0.07 < frac < 0.13, frac  # ~p within each batch: per sample, never all-or-nothing
    # different samples are dropped at different steps
    assert not torch.equal(seen[0][1] == 2, seen[1][1] == 2)


# ---------------------------------------------------------------------------------------------
# command line: train the pair, sample with every kind of guidance


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """`diffguide train --preset tiny --with-amateur --amateur-width 8 --with-classifier` (in-process: the
    entry point's own function, without the seconds a fresh interpreter takes to import torch)."""
    out = tmp_path_factory.mktemp("pair")
    code = main(
        ["train", "--preset", "tiny", "--out", str(out), "--no-progress",
         "--with-amateur", "--amateur-width", "8", "--amateur-steps", "10",
         "--with-classifier", "--classifier-steps", "150"]
    )  # fmt: skip
    assert code == 0
    return out


def test_train_with_amateur_writes_the_pair_and_the_note(pair):
    expert, amateur = pair / "tiny", pair / "tiny-amateur"
    note = json.loads((expert / "guidance.json").read_text())
    assert note == {"amateur": "../tiny-amateur", "classifier": "../tiny-classifier"}
    cfg = json.loads((amateur / "config.json").read_text())
    expert_cfg = json.loads((expert / "config.json").read_text())
    # the width and steps asked for (the expert keeps tiny's 32); the default halves are checked in
    # test_amateur_config_defaults
    assert cfg["train"]["steps"] == 10 and cfg["model"]["width"] == 8 and expert_cfg["model"]["width"] == 32
    assert cfg["data"] == expert_cfg["data"]
    # the saved weights are those of a width-8 net: the run loads, and the layer that reads the 2-D
    # point maps it to 8 features
    from diffguide.models.runs import load_run

    shapes = [tuple(p.shape) for p in load_run(amateur).denoiser.parameters() if p.ndim == 2]
    assert [s for s in shapes if s[1] == 2] == [(8, 2)], shapes
    assert (pair / "tiny-classifier" / "classifier.safetensors").is_file()


def test_sample_with_each_guidance_kind(pair, tmp_path):
    run = str(pair / "tiny")
    base = ["sample", run, "--n", "40", "--seed", "1", "--class", "0", "--steps", "8"]
    outs = {}
    for kind, extra in (
        ("none", ()),
        ("cfg", ("--w", "1")),
        ("auto", ("--w", "1")),
        ("cfg", ("--w", "3")),
        ("auto", ("--w", "3")),
        ("auto", ("--w", "3", "--guide", str(pair / "tiny-amateur"))),
        ("auto", ("--w", "3", "--interval", "0.1", "5")),
        ("classifier", ("--w", "2")),
        ("cfg+auto", ("--w", "2", "--w-cfg", "1.5")),
    ):
        path = tmp_path / f"{kind}-{len(outs)}.npz"
        assert main([*base, "--guidance", kind, *extra, "--out", str(path)]) == 0
        outs[(kind, *extra)] = np.load(path)["samples"]
    none = outs[("none",)]
    # w = 1 is no guidance, whatever the guide
    np.testing.assert_array_equal(outs[("cfg", "--w", "1")], none)
    np.testing.assert_array_equal(outs[("auto", "--w", "1")], none)
    for key, value in outs.items():
        if key[0] != "none" and key[1:3] != ("--w", "1"):
            assert np.abs(value - none).max() > 1e-3, key
    # the amateur found through guidance.json is the one --guide names
    np.testing.assert_array_equal(
        outs[("auto", "--w", "3")], outs[("auto", "--w", "3", "--guide", str(pair / "tiny-amateur"))]
    )


def test_sample_classifier_guidance_is_the_librarys_and_favours_the_class(pair, tmp_path, capsys):
    """--guidance classifier samples exactly like the library's classifier_guidance on the run's null
    condition with the trained classifier, from the same seed; and judged by the exact Bayes classifier
    of the tree, the share of samples of class K rises with w (w = 0 is unconditional sampling).

    Measured (tiny run, 150-step classifier, 200 samples of class 0): share 0.39 at w = 0, 0.57 at 0.5,
    0.92 at 1, then saturates (0.945 at w = 2 and 3). Before the classifier's logits were scaled by
    sigma_data c_in, its sigma^2 grad log p(y | x) grew like sigma and the share fell to 0.25 at w = 2."""
    from diffguide import guidance as G
    from diffguide.classifiers.points import load_classifier
    from diffguide.models.runs import load_run

    run = load_run(pair / "tiny")
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 8, run.process, s.sigma_min, s.sigma_max, s.rho)
    base = ["sample", str(pair / "tiny"), "--n", "200", "--seed", "1", "--class", "0", "--steps", "8"]
    bayes = ExactClassifier(tree_mixture())
    share = {}
    for w in (0.0, 0.5, 1.0, 2.0, 3.0):
        path = tmp_path / f"clf{w}.npz"
        argv = [*base, "--guidance", "classifier", "--w", str(w), "--no-metrics", "--out", str(path)]
        assert main(argv) == 0, capsys.readouterr().err
        x = np.load(path)["samples"]
        if w == 2.0:
            guided = G.classifier_guidance(
                G.NullConditioned(run.denoiser, run.num_classes), load_classifier(pair / "tiny-classifier"), w
            )
            expected = generate(
                guided, 200, run.dataset.shape, sigmas=sigmas, sampler=s.sampler, seed=1, cond=0
            )
            np.testing.assert_allclose(x, expected.numpy(), rtol=0, atol=1e-6)
        xt = torch.from_numpy(x).double()
        labels = bayes(xt, torch.full((len(xt),), 1e-3, dtype=torch.float64)).argmax(1)
        share[w] = float((labels == 0).double().mean())
    assert share[0.0] < 0.7  # unconditional: both classes
    assert share[0.0] + 0.1 < share[0.5] < share[1.0] - 0.1, share
    assert share[1.0] > 0.85 and min(share[2.0], share[3.0]) >= share[1.0] - 0.03, share  # saturated


def test_sample_guidance_errors(pair, cli_run, tmp_path, capsys):
    run = str(pair / "tiny")
    out = str(tmp_path / "x.npz")

    def error(*args):
        capsys.readouterr()
        assert main(["sample", *args, "--out", out]) == 2
        return capsys.readouterr().err

    assert "unknown guidance kind 'atuo'; did you mean 'auto'" in error(run, "--guidance", "atuo")
    assert "--w must be >= 0" in error(run, "--guidance", "cfg", "--class", "0", "--w", "-1")
    assert "pass --class K" in error(run, "--guidance", "cfg")
    assert "pass --class K" in error(run, "--guidance", "classifier")
    # a run trained without --with-amateur names no amateur
    msg = error(str(cli_run), "--guidance", "auto")
    assert "--with-amateur" in msg and "--guide" in msg
    assert "is not a folder" in error(run, "--guidance", "auto", "--guide", str(tmp_path / "nope"))
    assert "--interval needs 0 <= LO < HI" in error(run, "--guidance", "auto", "--interval", "-1", "2")
    assert "guidance rescale must be in [0, 1], got 1.5" in error(
        run, "--guidance", "auto", "--rescale", "1.5"
    )
    assert (
        "--rescale applies to --guidance cfg, auto, cfg+auto, fdg, icg, pag, seg, slg, dropout or tsg, not none"
        in error(run, "--rescale", "0.5")
    )


def test_sample_rescale_is_the_librarys(pair, tmp_path, capsys):
    """--rescale PHI samples exactly like the library's combinator with rescale=PHI (and not like PHI = 0)."""
    from diffguide import guidance as G
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    run = load_run(pair / "tiny")
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 8, run.process, s.sigma_min, s.sigma_max, s.rho)
    base = ["sample", str(pair / "tiny"), "--n", "40", "--seed", "2", "--class", "1", "--steps", "8"]
    outs = {}
    for phi in (0.0, 0.7):
        path = tmp_path / f"r{phi}.npz"
        argv = [*base, "--guidance", "cfg", "--w", "3", "--rescale", str(phi), "--out", str(path)]
        assert main(argv) == 0, capsys.readouterr().err
        outs[phi] = np.load(path)["samples"]
        guided = G.classifier_free_guidance(run.denoiser, 3.0, run.num_classes, rescale=phi)
        expected = generate(guided, 40, run.dataset.shape, sigmas=sigmas, sampler=s.sampler, seed=2, cond=1)
        np.testing.assert_allclose(outs[phi], expected.numpy(), rtol=0, atol=1e-6)
    assert np.abs(outs[0.7] - outs[0.0]).max() > 1e-3


def test_amateur_config_defaults():
    from diffguide.config import load_preset
    from diffguide.guidance.pairing import amateur_config

    cfg = load_preset("tree-edm")
    a = amateur_config(cfg)
    assert (a.model.width, a.train.steps) == (cfg.model.width // 2, cfg.train.steps // 2)
    assert a.name == "tree-edm-amateur" and a.data == cfg.data and a.train.p_uncond == cfg.train.p_uncond
    same = amateur_config(cfg, width=cfg.model.width, steps=1000)  # the seed's: same net, fewer steps
    assert (same.model.width, same.train.steps) == (cfg.model.width, 1000)


# ---------------------------------------------------------------------------------------------
# the noise-conditional classifier


def test_trained_classifier_is_accurate_and_round_trips_without_pickle(tmp_path):
    from diffguide.classifiers.points import ClassifierConfig, accuracy, load_classifier, train_classifier
    from diffguide.config import load_preset
    from diffguide.errors import CheckpointError

    cfg = load_preset("tree-edm")
    folder = train_classifier(
        cfg, tmp_path / "clf", ClassifierConfig(width=32, depth=2, steps=300, batch_size=512)
    )
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "classifier.safetensors"]
    clf = load_classifier(folder)
    mixture = tree_mixture()
    x, comp = mixture.sample(2000, generator=torch.Generator().manual_seed(0))
    labels = mixture.classes[comp]
    assert accuracy(clf, x, labels, sigma=0.05) > 0.95  # the classes are far apart at low noise
    # the Bayes classifier is the ceiling; at high noise both are near chance
    assert accuracy(ExactClassifier(mixture), x, labels, sigma=0.05) >= 0.99
    again = load_classifier(folder)
    sigma = torch.full((50,), 0.3)
    assert torch.equal(clf(x[:50].float(), sigma), again(x[:50].float(), sigma))
    record = json.loads((folder / "classifier.json").read_text())
    assert record["kind"] == "points" and record["format"] == "diffguide-classifier-3"
    # the run's noise levels
    assert record["training"]["noise"] == json.loads(json.dumps(cfg.diffusion.loss.__dict__))
    # a folder of another kind is refused with a clear message
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "classifier.json").write_text('{"data": {}}')
    (tmp_path / "other" / "classifier.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a noise-conditional classifier"):
        load_classifier(tmp_path / "other")
    # one of the format before the high-noise scaling: refused, with what to do
    (tmp_path / "other" / "classifier.json").write_text('{"format": "diffguide-classifier-1"}')
    with pytest.raises(CheckpointError, match="older format.*retrain it with"):
        load_classifier(tmp_path / "other")
    with pytest.raises(CheckpointError, match="--with-classifier"):
        load_classifier(tmp_path / "missing")


def test_guide_can_be_an_earlier_checkpoint_of_the_same_run(cli_run, tmp_path, capsys):
    """Seed 000's amateur: the same run's earlier snapshot, given as --guide RUN/checkpoints/FILE."""
    from diffguide import guidance as G
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    early = cli_run / "checkpoints" / "ckpt-00000030.safetensors"
    run, amateur = load_run(cli_run), load_run(cli_run, str(early))
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 8, run.process, s.sigma_min, s.sigma_max, s.rho)
    guided = G.autoguidance(run.denoiser, amateur.denoiser, 2.5)
    expected = generate(guided, 40, run.dataset.shape, sigmas=sigmas, sampler=s.sampler, seed=6, cond=0)
    out = tmp_path / "snap.npz"
    argv = ["sample", str(cli_run), "--n", "40", "--seed", "6", "--class", "0", "--steps", "8"]
    assert main([*argv, "--guidance", "auto", "--w", "2.5", "--guide", str(early), "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out)["samples"], expected.numpy(), rtol=0, atol=1e-6)
    capsys.readouterr()
    stray = tmp_path / "notes.txt"
    stray.write_text("not a checkpoint")
    assert main([*argv, "--guidance", "auto", "--guide", str(stray), "--out", str(out)]) == 2
    assert "is a file but not a checkpoint inside a run folder" in capsys.readouterr().err
