"""Frequency-decoupled guidance (guidance/frequency.py): the pyramid equals kornia's (diffusers' own
dependency for its guider), the combination equals diffusers' FrequencyDecoupledGuidance `forward` on
random image-shaped tensors after `fdg_from_diffusers`, identities that hold for any denoisers (equal
weights: CFG; every weight 1: the main model exactly; x0 and eps spaces agree where FDG is linear), and
the registry, the CLI and its refusals (2D runs, too many levels for the image)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffguide.config import apply_overrides, load_preset
from diffguide.data import make_dataset
from diffguide.errors import ConfigError
from diffguide.guidance import NullConditioned, classifier_free_guidance
from diffguide.guidance.frequency import FDG, fdg_from_diffusers, from_pyramid, laplacian_pyramid
from diffguide.guidance.spec import GuidanceSpec, build_guided
from diffguide.models.build import build_denoiser, build_network
from diffguide.models.runs import Run, load_run
from diffguide.processes import make_process
from tests.helpers import run_cli

kornia = pytest.importorskip("kornia", reason="kornia (the dev extra) builds diffusers' FDG pyramid")
guiders = pytest.importorskip("diffusers.guiders")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pair(shape=(4, 3, 16, 16), seed=0):
    """Two correlated random predictions (float64), like a conditional and an unconditional one."""
    a = torch.randn(*shape, generator=gen(seed), dtype=torch.float64)
    return a, a + 0.5 * torch.randn(*shape, generator=gen(seed + 1), dtype=torch.float64)


def idle(x, sigma, cond=None):
    return x


def fixed(prediction):
    """A denoiser returning `prediction` whatever its input."""
    return lambda x, sigma, cond=None: prediction


def diffusers_fdg(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Guiders are currently an experimental feature"
        return guiders.FrequencyDecoupledGuidance(**kwargs)


# ------------------------------------------------------------------ the pyramid


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_pyramid_equals_kornias_and_rebuilds_its_input(levels):
    x = torch.randn(2, 3, 16, 32, generator=gen(2), dtype=torch.float64)
    expected = kornia.geometry.transform.build_laplacian_pyramid(x, levels, minimal_padding=True)
    ours = laplacian_pyramid(x, levels)
    assert len(ours) == levels
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(from_pyramid(ours), x, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ parity with diffusers' guider


@pytest.mark.parametrize(
    "settings",
    [
        dict(guidance_scales=[10.0, 5.0]),  # diffusers' default: w = 10, w_low = 5
        dict(guidance_scales=[5.0, 3.5, 2.0]),  # three levels, linearly spaced
        dict(guidance_scales=[1.5, 4.0]),  # more guidance on the low band
        dict(guidance_scales=[3.0, 1.5], parallel_weights=0.3, use_original_formulation=True),
        dict(guidance_scales=[4.0, 2.0], guidance_rescale=0.7),
    ],
)
def test_fdg_equals_diffusers_frequency_decoupled_guidance(settings):
    """diffusers acts on raw model outputs (eps for eps models): ours in eps space at sigma = 1, where
    the denoiser outputs x - eps, so that its rescale (on the implied noise) sees what diffusers' does."""
    eps_c, eps_u = pair()
    expected = diffusers_fdg(**settings).forward(eps_c, eps_u).pred
    params = fdg_from_diffusers(
        settings["guidance_scales"], settings.get("parallel_weights"), settings.get("guidance_rescale", 0.0),
        settings.get("use_original_formulation", False),
    )  # fmt: skip
    x = torch.randn(eps_c.shape, generator=gen(5), dtype=torch.float64)
    w = params.pop("w")
    ours = FDG(fixed(x - eps_c), fixed(x - eps_u), w, space="eps", **params)
    sigma = torch.ones(len(x), dtype=torch.float64)
    torch.testing.assert_close(x - ours(x, sigma), expected, rtol=1e-10, atol=1e-10)


def test_conversion_refuses_what_ours_cannot_express():
    with pytest.raises(ConfigError, match="spaces the level weights linearly"):
        fdg_from_diffusers([8.0, 5.0, 1.5])
    with pytest.raises(ConfigError, match="from use_original_formulation=True only"):
        fdg_from_diffusers([4.0, 2.0], parallel_weights=0.5)
    assert fdg_from_diffusers([4.0, 2.0], use_original_formulation=True)["w"] == 5.0


# ------------------------------------------------------------------ identities


@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (3, 2, 10, 14)])  # 10 x 14: padded to 12 x 16
def test_equal_weights_are_cfg_and_weights_1_are_the_main_model(shape):
    main, guide = pair(shape)
    x = torch.randn(shape, generator=gen(3), dtype=torch.float64)
    sigma = torch.linspace(0.5, 5.0, shape[0], dtype=torch.float64)
    for levels in (2, 3):
        same = FDG(fixed(main), fixed(guide), 3.0, w_low=3.0, levels=levels)(x, sigma)
        torch.testing.assert_close(same, guide + 3.0 * (main - guide), rtol=1e-12, atol=1e-12)
        none = FDG(fixed(main), fixed(guide), 1.0, w_low=1.0, levels=levels, parallel_weight=0.2)
        assert torch.equal(none(x, sigma), main)


def test_x0_and_eps_spaces_agree_where_fdg_is_linear():
    main, guide = pair()
    x = torch.randn(main.shape, generator=gen(4), dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 4.0, 20.0], dtype=torch.float64)
    a = FDG(fixed(main), fixed(guide), 4.0, w_low=1.5, levels=3, space="x0")(x, sigma)
    b = FDG(fixed(main), fixed(guide), 4.0, w_low=1.5, levels=3, space="eps")(x, sigma)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert (a - (guide + 4.0 * (main - guide))).abs().max() > 0.1  # the bands' weights differ


def test_a_schedule_scales_every_band_and_the_interval_leaves_main():
    """w_l(sigma) = 1 + (w_l - 1) m(sigma) in every band: outside a step schedule no guidance at all."""
    from diffguide.guidance.methods import WeightSchedule

    main, guide = pair()
    x = torch.zeros_like(main)
    sigma = torch.tensor([0.05, 0.5, 2.0, 50.0], dtype=torch.float64)
    step = FDG(fixed(main), fixed(guide), 3.0, w_low=2.0, schedule=WeightSchedule("step", 0.1, 10.0))
    plain = FDG(fixed(main), fixed(guide), 3.0, w_low=2.0)
    got, full = step(x, sigma), plain(x, sigma)
    assert torch.equal(got[[0, 3]], main[[0, 3]]) and torch.equal(got[1:3], full[1:3])


def test_images_only_and_levels_in_range():
    with pytest.raises(ConfigError, match=r"needs \[N, C, H, W\] samples, got shape \(5, 2\)"):
        FDG(idle, lambda x, s, c=None: 0 * x, 2.0)(torch.ones(5, 2), torch.ones(5))
    with pytest.raises(ConfigError, match="levels=4 needs images of at least 16 x 16 pixels, got 8 x 8"):
        FDG(idle, lambda x, s, c=None: 0 * x, 2.0, levels=4)(torch.ones(2, 1, 8, 8), torch.ones(2))
    with pytest.raises(ConfigError, match=r"FDG levels must be an integer in \[2, 8\], got 1"):
        FDG(idle, idle, 2.0, levels=1)
    with pytest.raises(ConfigError, match="FDG w_low must be a finite number >= 0.0, got nan"):
        FDG(idle, idle, 2.0, w_low=float("nan"))


# ------------------------------------------------------------------ the registry and the CLI

UNET = ["model.channels=8", "model.emb_dim=16"]


@pytest.fixture(scope="module")
def random_run():
    """A class-conditional digits U-Net (8 x 8) with random weights, as a Run in memory."""
    cfg = apply_overrides(load_preset("digits-cfg"), UNET)
    dataset = make_dataset(cfg.data)
    net = build_network(cfg, dataset)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(0)) * 0.2)
    denoiser = build_denoiser(cfg, net).eval()
    return Run(Path("unused"), cfg, dataset, make_process(cfg.diffusion.process), denoiser, 0, Path("unused"))


def test_builder_equals_the_class_and_cfg_at_equal_weights(random_run):
    d = random_run.denoiser
    x = torch.randn(6, 1, 8, 8, generator=gen(1))
    sigma, cond = torch.logspace(-1, 1, 6), torch.arange(6)
    spec = GuidanceSpec("fdg", 3.0, rescale=0.5, options={"w_low": 1.5, "levels": 3, "parallel_weight": 0.5})
    expected = FDG(d, NullConditioned(d, 10), 3.0, w_low=1.5, levels=3, parallel_weight=0.5, rescale=0.5)
    with torch.no_grad():
        got = build_guided(random_run, spec)(x, sigma, cond)
        assert torch.equal(got, expected(x, sigma, cond))
        cfg = classifier_free_guidance(d, 3.0, 10)(x, sigma, cond)
        same = build_guided(random_run, GuidanceSpec("fdg", 3.0, options={"w_low": 3.0}))(x, sigma, cond)
    torch.testing.assert_close(same, cfg, rtol=1e-5, atol=1e-5)
    assert (got - cfg).abs().max() > 1e-3
    assert spec.describe() == ("FDG w=3, rescale 0.5, w_low=1.5, levels=3, parallel_weight=0.5")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A digits-cfg run folder trained for 2 steps (the CLI reads it; only equality matters)."""
    from diffguide.train import train

    out = tmp_path_factory.mktemp("fdg") / "digits"
    short = ["train.steps=2", "train.ckpt_every=2", "train.batch_size=8", "train.log_every=2",
             "train.warmup_steps=0", "sample.n=4"]  # fmt: skip
    train(apply_overrides(load_preset("digits-cfg"), [*UNET, *short]), out, progress=False)
    return out


def test_cli_samples_with_fdg_like_the_library(image_run, tmp_path):
    from PIL import Image

    from diffguide.plots.images import grid_image
    from diffguide.samplers.generation import generate, sigma_grid

    r = run_cli("sample", str(image_run), "--out", str(tmp_path / "x.png"), "--class", "3", "--n", "3",
                "--guidance", "fdg", "--w", "3", "--guidance-option", "w_low=1.5", "--steps", "2",
                "--no-metrics")  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = load_run(image_run)
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 2, run.process, s.sigma_min, s.sigma_max, s.rho)
    spec = GuidanceSpec("fdg", 3.0, options={"w_low": 1.5})
    expected = generate(build_guided(run, spec), 3, run.dataset.shape, sigmas=sigmas, sampler=s.sampler,
                        seed=0, cond=3)  # fmt: skip
    written = np.asarray(Image.open(tmp_path / "x.png")).astype(int)
    assert np.abs(written - np.asarray(grid_image(expected)).astype(int)).max() <= 1  # 8-bit rounding


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--guidance-option", "levels=4"], "--guidance fdg with levels=4 needs images of at least 16 x 16 pixels, got 8 x 8; use fewer levels"),
        (["--guidance-option", "levels=1"], "FDG levels must be an integer in [2, 8], got 1"),
        (["--guidance-option", "levels=2.5"], "option levels of --guidance fdg must be an integer, got 2.5"),
        (["--guidance-option", "w_low=-1"], "FDG w_low must be a finite number >= 0.0, got -1.0"),
        (["--guidance-option", "parallel_weight=inf"], "FDG parallel_weight must be a finite number, got inf"),
        (["--guidance-option", "w_lo=2"], "unknown option 'w_lo' for --guidance fdg; did you mean 'w_low'?"),
    ],
)  # fmt: skip
def test_bad_fdg_settings_exit_2_with_one_line(image_run, tmp_path, options, message):
    before = {p: p.read_bytes() for p in image_run.rglob("*") if p.is_file()}
    r = run_cli("sample", str(image_run), "--out", str(tmp_path / "x.png"), "--class", "0", "--guidance",
                "fdg", "--w", "3", *options)  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "x.png").exists()
    assert {p: p.read_bytes() for p in image_run.rglob("*") if p.is_file()} == before
