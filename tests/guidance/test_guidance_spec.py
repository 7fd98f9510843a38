"""The one guidance builder (diffguide.guidance.spec): the CLI and the dashboard build the same denoiser
for the same choices, the builder equals the combinators, and bad specs name the bad value.

Runs used (trained for a few steps: only equality of outputs matters here, not their quality): `tiny`
(2D tree, class-conditional, checkpoints at steps 2 and 4), its amateur `tiny-amateur` and classifier
`tiny-classifier` named in tiny/guidance.json, and an unconditional `tiny-uncond`.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from diffguide.classifiers.points import ExactClassifier, load_classifier
from diffguide.cli import build_parser
from diffguide.cli.guidance_args import CLI_NAMES
from diffguide.cli.guidance_args import guided_denoiser as cli_guided_denoiser
from diffguide.dashboard import generation
from diffguide.dashboard.safety import RunsFolder
from diffguide.denoiser import ClipDenoised
from diffguide.errors import ConfigError
from diffguide.guidance import (
    Guided,
    NullConditioned,
    autoguidance,
    cfg_and_autoguidance,
    classifier_free_guidance,
    classifier_guidance,
    guidance,
)
from diffguide.guidance.cfgpp import CFGPlusPlus, sample_euler_cfgpp
from diffguide.guidance.methods import APG, TCFG, CFGZeroStar, MamboG, RandomConditioned
from diffguide.guidance.perturbed import PerturbedGuide, TimestepPerturbedGuide
from diffguide.guidance.spec import (
    EXACT,
    METHODS,
    GuidanceSpec,
    Loaders,
    Method,
    build_guided,
    check,
    sampler_for,
)
from diffguide.models.nets.perturb import DropResidual
from diffguide.models.runs import load_run
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from diffguide.classifiers.points import ClassifierConfig, train_classifier
    from diffguide.config import apply_overrides, load_preset
    from diffguide.guidance.pairing import write_guidance_note
    from diffguide.train import train

    out = tmp_path_factory.mktemp("spec-runs")
    short = ["train.steps=4", "train.ckpt_every=2", "train.batch_size=64", "train.log_every=2", "sample.n=10"]
    cfg = apply_overrides(load_preset("tiny"), short)
    train(cfg, out / "tiny", progress=False)
    amateur = apply_overrides(load_preset("tiny"), [*short, "model.width=8", "train.steps=2"])
    amateur.name = "tiny-amateur"
    train(amateur, out / "tiny-amateur", progress=False)
    uncond = apply_overrides(load_preset("tiny"), [*short, "data.conditional=false", "train.steps=2"])
    uncond.name = "tiny-uncond"
    train(uncond, out / "tiny-uncond", progress=False)
    clf = ClassifierConfig(width=16, depth=1, steps=5, batch_size=64)
    train_classifier(cfg, out / "tiny-classifier", clf)
    write_guidance_note(out / "tiny", amateur=out / "tiny-amateur", classifier=out / "tiny-classifier")
    return out


@pytest.fixture(scope="module")
def run(runs):
    return load_run(runs / "tiny")


def _inputs(n=96):
    """Points, per-sample noise levels spanning the guidance interval (0.1, 5) and beyond, labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g) * 2
    sigma = torch.logspace(-2, 1.5, n)
    cond = torch.randint(0, 2, (n,), generator=g)
    return x, sigma, cond


def _out(denoiser):
    x, sigma, cond = _inputs()
    with torch.no_grad():
        return denoiser(x, sigma, cond)


# ---------------------------------------------------------------------------------------------
# the two front ends: the same choices give the same denoiser

CHECKPOINT = "ckpt-00000002.safetensors"
# kind -> (CLI options, the dashboard's widget values) meaning the same choices
FRONT_END_CASES = {
    "none": (["--clip-denoised", "-0.5", "0.5"], dict(clip=(-0.5, 0.5))),
    "cfg": (
        ["--w", "2.5", "--rescale", "0.5", "--interval", "0.1", "5"],
        dict(w=2.5, rescale=0.5, interval=(0.1, 5.0)),
    ),
    # an earlier checkpoint of the run itself as the guide (the dashboard's run@ckpt-N)
    "auto": (
        ["--w", "3", "--guide", f"{{runs}}/tiny/checkpoints/{CHECKPOINT}"],
        dict(w=3.0, guide_id=f"tiny@{CHECKPOINT}"),
    ),
    # the CLI finds the classifier and the amateur through guidance.json; the page lists them first
    "classifier": (
        ["--w", "1.5", "--interval", "0.1", "5"],
        dict(w=1.5, interval=(0.1, 5.0), classifier_id="tiny-classifier"),
    ),
    "cfg+auto": (["--w", "1.5", "--w-cfg", "2"], dict(w=1.5, w_cfg=2.0, guide_id="tiny-amateur")),
    "apg": (
        [
            "--w",
            "3",
            "--guidance-option",
            "eta=0.5",
            "--guidance-option",
            "norm_threshold=2",
            "--schedule",
            "linear",
            "0.1",
            "5",
        ],
        dict(w=3.0, options={"eta": 0.5, "norm_threshold": 2.0}, schedule=("linear", 0.1, 5.0)),
    ),  # fmt: skip
    "cfg-zero*": (
        ["--w", "2.5", "--guidance-option", "zero_init_sigma=20"],
        dict(w=2.5, options={"zero_init_sigma": 20.0}),
    ),
    "tcfg": (["--w", "2", "--guidance-option", "space=eps"], dict(w=2.0, options={"space": "eps"})),
    "mambo-g": (["--w", "4", "--guidance-option", "alpha=2"], dict(w=4.0, options={"alpha": 2.0})),
    "icg": (["--w", "2", "--interval", "0.1", "5"], dict(w=2.0, interval=(0.1, 5.0))),
    "cfg++": (["--w", "0.6"], dict(w=0.6)),
    "slg": (["--w", "2", "--w-cfg", "1.5"], dict(w=2.0, w_cfg=1.5)),
    "dropout": (
        [
            "--w",
            "2",
            "--guidance-option",
            "dropout=0.3",
            "--guidance-option",
            "auto_guidance_layers=blocks.0",
        ],
        dict(w=2.0, options={"dropout": 0.3, "auto_guidance_layers": "blocks.0"}),
    ),
    "tsg": (
        ["--w", "2", "--w-cfg", "1.5", "--guidance-option", "s=0.5", "--guidance-option", "seed=3"],
        dict(w=2.0, w_cfg=1.5, options={"s": 0.5, "seed": 3}),
    ),
    # refused on this MLP run (no attention) by both front ends; tests/guidance/test_perturbed_guidance.py
    # builds them on a U-Net
    "pag": (["--w", "2"], dict(w=2.0)),
    "seg": (["--w", "2"], dict(w=2.0)),
    # refused on 2D points; tests/guidance/test_frequency_guidance.py builds it on a U-Net
    "fdg": (["--w", "2", "--guidance-option", "w_low=1.5"], dict(w=2.0, options={"w_low": 1.5})),
}
NEEDS_ATTENTION = ("pag", "seg")
REFUSED = {
    **{kind: f"{kind} perturbs self-attention layers; run 'tiny' has none \\(model.arch='mlp'\\): use a U-Net"
       for kind in NEEDS_ATTENTION},
    "fdg": "fdg splits images into frequency bands .*; run 'tiny' makes samples of shape \\(2,\\), not images",
}  # fmt: skip


def _cli_args(runs, kind: str, options: list[str]):
    argv = ["sample", str(runs / "tiny"), "--out", "x.npz", "--class", "0", "--guidance", kind]
    return build_parser().parse_args([*argv, *(o.format(runs=runs) for o in options)])


@pytest.mark.parametrize("kind", list(METHODS))
def test_cli_and_dashboard_build_the_same_denoiser(runs, run, kind):
    """Every method of the registry (a new one needs a case here: the KeyError says so)."""
    options, widgets = FRONT_END_CASES[kind]
    spec = generation.guidance_spec(RunsFolder(runs), kind, **widgets)
    if kind in REFUSED:
        message = REFUSED[kind]
        with pytest.raises(ConfigError, match=f"^--guidance {message}"):
            cli_guided_denoiser(_cli_args(runs, kind, options), run)
        with pytest.raises(ConfigError, match=f"^guidance {message}"):
            generation.guided_denoiser(run, spec)
        return
    from_cli = cli_guided_denoiser(_cli_args(runs, kind, options), run)
    from_page = generation.guided_denoiser(run, spec)
    a, b = _out(from_cli), _out(from_page)
    assert torch.equal(a, b), (a - b).abs().max()
    if kind != "none":  # and the guidance does something: the test could fail
        assert (a - _out(run.denoiser)).abs().max() > 1e-4
    else:
        assert a.abs().max() <= 0.5 and torch.equal(a, _out(run.denoiser).clamp(-0.5, 0.5))


def test_exact_classifier_from_both_front_ends(runs, run):
    """`--guide exact` and the page's "exact Bayes classifier" choice: the same Bayes classifier guidance."""
    args = _cli_args(runs, "classifier", ["--w", "2", "--guide", "exact"])
    spec = generation.guidance_spec(
        RunsFolder(runs), "classifier", w=2.0, classifier_id=generation.EXACT_CLASSIFIER
    )
    expected = classifier_guidance(
        NullConditioned(run.denoiser, 2), ExactClassifier(run.dataset.mixture), 2.0
    )
    assert torch.equal(_out(cli_guided_denoiser(args, run)), _out(expected))
    assert torch.equal(_out(generation.guided_denoiser(run, spec)), _out(expected))


# ---------------------------------------------------------------------------------------------
# the builder against the combinators


def _references(runs, run):
    """kind -> (spec, the same guidance written with the combinators directly)."""
    amateur = load_run(runs / "tiny-amateur").denoiser
    early = load_run(runs / "tiny", CHECKPOINT).denoiser
    clf = load_classifier(runs / "tiny-classifier")
    k, d = run.num_classes, run.denoiser
    return {
        "none": (GuidanceSpec(), d),
        "cfg": (
            GuidanceSpec("cfg", 3.0, interval=(0.1, 5.0), rescale=0.7),
            classifier_free_guidance(d, 3.0, k, interval=(0.1, 5.0), rescale=0.7),
        ),
        "auto": (
            GuidanceSpec("auto", 2.0, guide=runs / "tiny" / "checkpoints" / CHECKPOINT),
            autoguidance(d, early, 2.0),
        ),
        "classifier": (GuidanceSpec("classifier", 2.0), classifier_guidance(NullConditioned(d, k), clf, 2.0)),
        "cfg+auto": (
            GuidanceSpec("cfg+auto", 1.5, w_cfg=2.5, rescale=0.3),
            cfg_and_autoguidance(d, amateur, 1.5, 2.5, k, rescale=0.3),
        ),
        "apg": (GuidanceSpec("apg", 3.0, options={"eta": 0.5}), APG(d, NullConditioned(d, k), 3.0, eta=0.5)),
        "cfg-zero*": (GuidanceSpec("cfg-zero*", 2.0), CFGZeroStar(d, NullConditioned(d, k), 2.0)),
        "tcfg": (
            GuidanceSpec("tcfg", 2.0, options={"space": "eps"}),
            TCFG(d, NullConditioned(d, k), 2.0, space="eps"),
        ),
        "mambo-g": (
            GuidanceSpec("mambo-g", 4.0, options={"alpha": 2.0}),
            MamboG(d, NullConditioned(d, k), 4.0, alpha=2.0),
        ),
        "icg": (GuidanceSpec("icg", 2.0), guidance(d, RandomConditioned(d, k, 0), 2.0)),
        "cfg++": (GuidanceSpec("cfg++", 0.6), CFGPlusPlus(d, NullConditioned(d, k), 0.6)),
        "slg": (
            GuidanceSpec("slg", 2.0, w_cfg=1.5),
            Guided(
                d,
                [
                    (PerturbedGuide(d, [d.net.blocks[len(d.net.blocks) // 2]], DropResidual(1.0)), 2.0),
                    (NullConditioned(d, k), 1.5),
                ],
            ),
        ),  # fmt: skip
        "dropout": (
            GuidanceSpec("dropout", 2.0, options={"dropout": 0.3, "auto_guidance_layers": "blocks.0"}),
            guidance(d, PerturbedGuide(d, [d.net.blocks[0]], DropResidual(0.3, seed=0)), 2.0),
        ),
        "tsg": (
            GuidanceSpec("tsg", 2.0, options={"s": 0.5, "alpha": 1.0, "seed": 3}),
            guidance(d, TimestepPerturbedGuide(d, d.net.noise_emb, 0.5, 1.0, 3), 2.0),
        ),
    }


@pytest.mark.parametrize("kind", [k for k in METHODS if k not in REFUSED])
def test_builder_equals_the_combinators(runs, run, kind):
    spec, expected = _references(runs, run)[kind]
    assert torch.equal(_out(build_guided(run, spec)), _out(expected))


def test_builder_exact_classifier_and_clip(run):
    """classifier EXACT is the Bayes classifier of the run's mixture; clip clamps the guided estimate."""
    mixture = run.dataset.mixture
    expected = classifier_guidance(NullConditioned(run.denoiser, 2), ExactClassifier(mixture), 1.0)
    got = build_guided(run, GuidanceSpec("classifier", 1.0, classifier=EXACT))
    assert torch.equal(_out(got), _out(expected))
    clipped = build_guided(run, GuidanceSpec("cfg", 4.0, clip=(-0.2, 0.3)))
    assert isinstance(clipped, ClipDenoised)
    free = _out(classifier_free_guidance(run.denoiser, 4.0, 2))
    assert torch.equal(_out(clipped), free.clamp(-0.2, 0.3)) and not torch.equal(free, free.clamp(-0.2, 0.3))


def test_spec_describes_itself():
    assert GuidanceSpec().describe() == "no guidance"
    assert GuidanceSpec("cfg", 2, interval=(0.3, 5), rescale=0.7).describe() == (
        "CFG w=2, sigma in [0.3, 5], rescale 0.7"
    )
    assert GuidanceSpec("cfg+auto", 1.5).describe() == "autoguidance w=1.5 + CFG w=1.5"
    assert (
        GuidanceSpec("classifier", 2, clip=(-1, 1)).describe() == "classifier scale 2, x0 clipped to [-1, 1]"
    )


def test_a_new_method_is_one_registry_entry(runs, run, monkeypatch):
    """A method added to METHODS alone is checked, described and built from both front ends."""

    def half_cfg(parts, spec):  # CFG with half the weight's push: a toy method
        return guidance(parts.denoiser, parts.null_guide(spec), 1 + (spec.w - 1) / 2, interval=spec.interval)

    method = Method(half_cfg, frozenset({"interval"}), "half CFG", "half CFG w={w:g}", null_guide=True)
    monkeypatch.setitem(METHODS, "half-cfg", method)
    from_cli = cli_guided_denoiser(_cli_args(runs, "half-cfg", ["--w", "3"]), run)
    spec = generation.guidance_spec(RunsFolder(runs), "half-cfg", w=3.0)
    assert spec.describe() == "half CFG w=3"
    expected = _out(classifier_free_guidance(run.denoiser, 2.0, run.num_classes))
    assert torch.equal(_out(from_cli), expected)
    assert torch.equal(_out(generation.guided_denoiser(run, spec)), expected)
    with pytest.raises(
        ConfigError,
        match="--rescale applies to --guidance cfg, auto, cfg\\+auto, fdg, icg, pag, seg, slg, dropout or tsg, not half-cfg",
    ):
        cli_guided_denoiser(_cli_args(runs, "half-cfg", ["--rescale", "0.5"]), run)


def test_loaders_are_used_for_every_guide(runs, run):
    """build_guided reads guides only through its loaders (the dashboard passes cached, checked ones)."""
    seen = []

    def run_loader(run_dir, checkpoint, use_ema):
        seen.append((run_dir.name, checkpoint, use_ema))
        return load_run(run_dir, checkpoint, use_ema)

    build_guided(run, GuidanceSpec("auto", 2.0, use_ema=False), loaders=Loaders(run=run_loader))
    assert seen == [("tiny-amateur", None, False)]


# ---------------------------------------------------------------------------------------------
# bad specs


@pytest.mark.parametrize(
    "spec, message",
    [
        (GuidanceSpec("atuo"), "unknown guidance kind 'atuo'; did you mean 'auto'"),
        (GuidanceSpec("cfg", -1), r"guidance weight w must be >= 0 \(1 = no guidance\), got -1.0"),
        (GuidanceSpec("cfg", float("nan")), "guidance weight w must be >= 0 .*got nan"),
        (GuidanceSpec("cfg+auto", 2, w_cfg=-2), "w_cfg must be >= 0 .*got -2.0"),
        (GuidanceSpec("cfg", 2, interval=(-1, 2)), r"bounds must be >= 0, got \(-1.0, 2.0\)"),
        (GuidanceSpec("auto", 2, rescale=1.5), r"guidance rescale must be in \[0, 1\], got 1.5"),
        (GuidanceSpec("cfg", 2, clip=(1, -1)), "clip needs LOW < HIGH, got 1 -1"),
        (
            GuidanceSpec(rescale=0.5),
            r"rescale applies to guidance cfg, auto, cfg\+auto, fdg, icg, pag, seg, slg, dropout or tsg, not none",
        ),
        (GuidanceSpec("cfg", 2, guide="runs/x"), r"guide applies to guidance auto or cfg\+auto, not cfg"),
        (
            GuidanceSpec("auto", 2, w_cfg=2),
            r"w_cfg applies to guidance cfg\+auto, pag, seg, slg, dropout or tsg, not auto",
        ),
        (GuidanceSpec("auto", 2, classifier=EXACT), "classifier applies to guidance classifier, not auto"),
        (GuidanceSpec("classifier", 2, interval=(0, 1), null=torch.zeros(1)), "null condition applies to"),
    ],
)
def test_bad_specs_name_the_value(spec, message):
    with pytest.raises(ConfigError, match=message):
        check(spec)


def test_front_ends_name_the_fields_their_way(runs, tmp_path, capsys):
    """One rule, one message; each front end names the field as its user sees it (through the CLI's
    entry point: options that used to be ignored there are refused)."""
    from diffguide.cli import main

    argv = ["sample", str(runs / "tiny"), "--out", str(tmp_path / "x.npz"), "--class", "0"]
    for extra, message in (
        (
            ["--guidance", "cfg", "--guide", str(runs / "tiny-amateur")],
            "--guide applies to --guidance auto, ",
        ),
        (
            ["--guidance", "auto", "--w-cfg", "2"],
            "--w-cfg applies to --guidance cfg+auto, pag, seg, slg, dropout or tsg, not auto",
        ),
        (
            ["--interval", "0.1", "5"],
            "--interval applies to --guidance cfg, auto, classifier, cfg+auto, apg, cfg-zero*, tcfg, mambo-g, fdg, icg, pag, "
            "seg, slg, dropout or tsg, not",
        ),
    ):
        capsys.readouterr()
        assert main([*argv, *extra]) == 2
        assert f"diffguide sample: error: {message}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^--w must be >= 0 \(1 = no guidance\), got -1.0$"):
        check(GuidanceSpec("cfg", -1), names=CLI_NAMES)
    with pytest.raises(
        ConfigError, match=r"^--guide applies to --guidance auto, classifier or cfg\+auto, not cfg$"
    ):
        check(GuidanceSpec("cfg", 2, guide="x"), names=CLI_NAMES)
    with pytest.raises(ConfigError, match="^x0 clip range needs LOW < HIGH"):
        check(GuidanceSpec(clip=(1, 1)), names=generation.DASHBOARD_NAMES)


@pytest.mark.parametrize("kind", ["cfg", "classifier", "cfg+auto"])
def test_methods_guiding_by_the_null_class_refuse_an_unconditional_run_everywhere(runs, kind):
    """The CLI's rule, now the dashboard's too (it used to allow classifier guidance here)."""
    uncond = load_run(runs / "tiny-uncond")
    with pytest.raises(
        ConfigError, match=rf"guidance {re.escape(kind)} needs a class-conditional run.*'tiny-uncond' is"
    ):
        check(GuidanceSpec(kind, 2.0), uncond)
    args = build_parser().parse_args(
        ["sample", str(runs / "tiny-uncond"), "--out", "x.npz", "--guidance", kind]
    )
    with pytest.raises(ConfigError, match=rf"^--guidance {re.escape(kind)} needs a class-conditional run"):
        cli_guided_denoiser(args, uncond)
    widgets = dict(guide_id="tiny-amateur", classifier_id=generation.EXACT_CLASSIFIER)
    spec = generation.guidance_spec(RunsFolder(runs), kind, w=2.0, **widgets)
    with pytest.raises(ConfigError, match=rf"^guidance {re.escape(kind)} needs a class-conditional run"):
        generation.guided_denoiser(uncond, spec)


def test_bad_guides_name_the_path(runs, run, tmp_path):
    stray = tmp_path / "notes.txt"
    stray.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="'.*notes.txt' is a file but not a checkpoint inside a run folder"):
        build_guided(run, GuidanceSpec("auto", 2.0, guide=stray))
    with pytest.raises(ConfigError, match="is not a folder"):
        build_guided(run, GuidanceSpec("auto", 2.0, guide=tmp_path / "missing"))
    with pytest.raises(ConfigError, match="has 0 classes but the main run has 2"):
        build_guided(run, GuidanceSpec("auto", 2.0, guide=runs / "tiny-uncond"))
    uncond = load_run(runs / "tiny-uncond")
    with pytest.raises(ConfigError, match="names no amateur"):
        build_guided(uncond, GuidanceSpec("auto", 2.0))


# ---------------------------------------------------------------------------------------------
# diffusers models: the same builder


@pytest.fixture(scope="module")
def text_models():
    """Two tiny UNet2DConditionModels (cross_attention_dim 8) as DiffusersModels: main and weaker guide."""
    diffusers = pytest.importorskip("diffusers")
    from diffguide.adapters.diffusers import DiffusersModel, diffusers_denoiser

    def model(seed, layers):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=layers,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=4,
            cross_attention_dim=8,
            attention_head_dim=2,
        ).eval()
        denoiser = diffusers_denoiser(unet, dict(diffusers.DDPMScheduler().config))
        return DiffusersModel(
            denoiser, denoiser.process, (3, 8, 8), denoiser.target, unet_class=type(unet).__name__
        )

    return model(0, 1), model(1, 1)


def test_diffusers_models_use_the_same_builder(text_models):
    """cfg by the null embedding (default zeros), autoguidance and the two together, on a
    UNet2DConditionModel: D1 + (w - 1)(D1 - D0) + (w_cfg - 1)(D1 - D1(null)), computed by hand."""
    from diffguide.adapters.diffusers import NullTextConditioned

    main, weak = text_models
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([0.5, 3.0])
    prompt, null = torch.randn(2, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    loaders = Loaders(diffusers=lambda path: weak)
    with torch.no_grad():
        d1, d0 = main.denoiser(x, sigma, prompt), weak.denoiser(x, sigma, prompt)
        d_null = main.denoiser(x, sigma, null.expand(2, -1, -1))
        both = build_guided(
            main, GuidanceSpec("cfg+auto", 2.0, w_cfg=3.0, guide="weak", null=null), loaders=loaders
        )
        expected = d1 + (2.0 - 1) * (d1 - d0) + (3.0 - 1) * (d1 - d_null)
        torch.testing.assert_close(both(x, sigma, prompt), expected, rtol=1e-5, atol=1e-5)
        zeros = build_guided(main, GuidanceSpec("cfg", 2.0))(x, sigma, prompt)
        same = guidance(main.denoiser, NullTextConditioned(main.denoiser, torch.zeros(1, 5, 8)), 2.0)
        assert torch.equal(zeros, same(x, sigma, prompt))
    with pytest.raises(ConfigError, match="guidance classifier is not available for a diffusers model"):
        check(GuidanceSpec("classifier", 2.0), main)
    with pytest.raises(ConfigError, match="guidance auto of a diffusers model needs guide DIR"):
        build_guided(main, GuidanceSpec("auto", 2.0))


def test_cli_diffusers_cfg_and_autoguidance(text_models, tmp_path):
    """`sample --diffusers DIR --guidance cfg+auto --guide DIR2 --w-cfg W`, new with the one builder (the
    CLI used to refuse --w-cfg there), samples like the library with the builder's denoiser."""
    import diffusers
    import numpy as np

    from diffguide.adapters.diffusers import load_diffusers
    from diffguide.cli import main
    from diffguide.samplers.generation import generate, sigma_grid

    folders = []
    for name, model in zip(("main", "weak"), text_models):
        model.denoiser.net.unet.save_pretrained(tmp_path / name)
        diffusers.DDPMScheduler().save_pretrained(tmp_path / name)
        folders.append(str(tmp_path / name))
    prompt = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "prompt.npy", prompt.numpy())
    out = tmp_path / "both.npz"
    argv = ["sample", "--diffusers", folders[0], "--encoder-hidden-states", str(tmp_path / "prompt.npy")]
    argv += ["--guidance", "cfg+auto", "--guide", folders[1], "--w", "2", "--w-cfg", "3"]
    assert main([*argv, "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    model = load_diffusers(folders[0])
    denoiser = build_guided(model, GuidanceSpec("cfg+auto", 2.0, w_cfg=3.0, guide=folders[1]))
    sigmas = sigma_grid("karras", 2, model.process)
    cond = prompt[None].expand(2, -1, -1)
    expected = generate(denoiser, 2, model.shape, sigmas=sigmas, sampler="dpmpp-2m", seed=0, cond=cond)
    assert np.array_equal(np.load(out)["samples"], expected.numpy())


# ---------------------------------------------------------------------------------------------
# the field's methods: schedules, options, CFG++'s sampler, bad values through the real entry point


def test_a_constant_schedule_is_plain_cfg_and_step_is_the_interval(run):
    plain = _out(build_guided(run, GuidanceSpec("cfg", 2.5)))
    assert torch.equal(
        _out(build_guided(run, GuidanceSpec("cfg", 2.5, schedule=("constant", 0, math.inf)))), plain
    )
    step = build_guided(run, GuidanceSpec("cfg", 2.5, schedule=("step", 0.1, 5.0)))
    assert torch.equal(_out(step), _out(build_guided(run, GuidanceSpec("cfg", 2.5, interval=(0.1, 5.0)))))


def test_cfgpp_brings_its_own_step_and_refuses_other_samplers(run):
    d = build_guided(run, GuidanceSpec("cfg++", 0.5))
    assert sampler_for(d, "euler") is sample_euler_cfgpp and sampler_for(d, "ddim") is sample_euler_cfgpp
    assert sampler_for(build_guided(run, GuidanceSpec("cfg", 2.0)), "heun") == "heun"
    with pytest.raises(ConfigError, match="not for sampler 'heun'; use --sampler euler"):
        sampler_for(d, "heun")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--guidance", "apg", "--guidance-option", "etaa=1"], "unknown option 'etaa' for --guidance apg; did you mean 'eta'?"),
        (["--guidance", "cfg", "--guidance-option", "eta=1"], "--guidance cfg takes no options, got 'eta'"),
        (["--guidance", "apg", "--guidance-option", "space=v"], "option space of --guidance apg must be x0 or eps, got 'v'"),
        (["--guidance", "apg", "--guidance-option", "eta=nan"], "option eta of --guidance apg must be a number (default 0.0), got nan"),
        (["--guidance", "cfg", "--schedule", "linear", "0", "5"], "the linear schedule runs over log sigma"),
        (["--guidance", "cfg", "--schedule", "cosin", "0.1", "5"], "unknown weight schedule 'cosin'; did you mean 'cosine'?"),
        (["--guidance", "cfg", "--schedule", "linear", "0.1", "5", "--rescale", "0.5"], "--rescale and --schedule do not combine"),
        (["--guidance", "auto", "--dynamic-threshold", "1.5"], "--dynamic-threshold percentile must be in (0, 1], got 1.5"),
        (["--guidance", "cfg++", "--sampler", "heun"], "CFG++ is defined for the first-order deterministic step"),
        (["--guidance", "cfg", "--w", "inf"], "--w must be finite (1 = no guidance), got inf"),
        (["--guidance", "cfg++", "--clip-denoised", "-1", "1"], "--guidance cfg++ renoises with its own estimates"),
        (["--guidance", "pag"], "--guidance pag perturbs self-attention layers; run 'tiny' has none (model.arch='mlp'): use a U-Net run (model.arch='unet'), or --guidance slg or dropout"),
        (["--guidance", "slg", "--guidance-option", "skip_layer_guidance_layers=mid,down"], "option skip_layer_guidance_layers of --guidance slg: 'down' names no residual layer of this MLP; its residual layers: blocks.0 (a name"),
        (["--guidance", "dropout", "--guidance-option", "dropout=0"], "dropout must be in (0, 1] (1: skip the layer), got 0.0"),
        (["--guidance", "seg", "--guidance-option", "seg_blur_sigma=x"], "option seg_blur_sigma of --guidance seg must be a number (default inf), got 'x'"),
        (["--guidance", "fdg"], "--guidance fdg splits images into frequency bands (a Laplacian pyramid over H x W); run 'tiny' makes samples of shape (2,), not images: use an image run, or --guidance cfg"),
        (["--guidance", "tsg", "--guidance-option", "s=-1"], "TSG s (the embedding's noise scale) must be a finite number >= 0, got -1.0"),
        (["--guidance", "tsg", "--guidance-option", "alpha=nan"], "option alpha of --guidance tsg must be a number (default 0.0), got nan"),
    ],
)  # fmt: skip
def test_bad_method_settings_exit_2_with_one_line(runs, tmp_path, options, message):
    before = {p: p.read_bytes() for p in (runs / "tiny").rglob("*") if p.is_file()}
    r = run_cli("sample", str(runs / "tiny"), "--out", str(tmp_path / "x.npz"), "--class", "0", *options)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "x.npz").exists()
    assert {p: p.read_bytes() for p in (runs / "tiny").rglob("*") if p.is_file()} == before


def test_cli_samples_with_cfgpp_like_the_library(runs, run, tmp_path):
    """`sample --guidance cfg++ --sampler euler`: the library's CFG++ step from the same per-sample noise."""
    import numpy as np

    from diffguide.samplers.generation import generate, sigma_grid

    r = run_cli("sample", str(runs / "tiny"), "--out", str(tmp_path / "x.npz"), "--class", "1", "--n", "64",
                "--guidance", "cfg++", "--w", "0.7", "--sampler", "euler", "--steps", "8", "--no-metrics")  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 8, run.process, s.sigma_min, s.sigma_max, s.rho)
    d = build_guided(run, GuidanceSpec("cfg++", 0.7))
    expected = generate(d, 64, run.dataset.shape, sigmas=sigmas, sampler=sample_euler_cfgpp, seed=0, cond=1)
    np.testing.assert_allclose(np.load(tmp_path / "x.npz")["samples"], expected.numpy(), rtol=1e-5, atol=1e-5)
