"""Guides made by perturbing the same network (PAG, SEG, SLG, dropout): the builder's combination equals
diffusers' guiders' `forward` given the same predictions, each perturbed prediction computed
independently (diffusers' attention-score skip, a mean-query torch function mode, forward hooks), and
the perturbation never leaks into the unperturbed pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from diffguide.config import apply_overrides, load_preset
from diffguide.errors import ConfigError
from diffguide.guidance.combinators import NullConditioned
from diffguide.guidance.perturbed import PerturbedGuide, auto_guidance_from_diffusers, from_diffusers
from diffguide.guidance.spec import GuidanceSpec, build_guided
from diffguide.models.nets.perturb import RESIDUAL, DropResidual, select_layers
from diffguide.models.nets.unet import ResBlock
from diffguide.models.runs import load_run
from tests.helpers import random_run, run_cli

guiders = pytest.importorskip("diffusers.guiders")
UNET = ["model.attn_resolutions=[4]", "model.channels=32"]  # digits 8x8: attention at 4x4 and in the mid


@pytest.fixture(scope="module")
def run():
    """A class-conditional digits U-Net with random weights, as a Run in memory."""
    return random_run("digits-cfg", UNET)


def inputs(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.logspace(-1, 1, n), torch.arange(n) % 10


def out(denoiser, mode=None):
    x, sigma, cond = inputs()
    with torch.no_grad():
        if mode is None:
            return denoiser(x, sigma, cond)
        with mode:
            return denoiser(x, sigma, cond)


class MeanQuery(TorchFunctionMode):
    """Every scaled_dot_product_attention call with its query replaced by the mean query (SEG, sigma = inf)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, *rest = args
            return func(q.mean(dim=-2, keepdim=True).expand_as(q), *rest, **kwargs)
        return func(*args, **kwargs)


class SkipResBlocks:
    """Forward hooks making the U-Net's mid ResBlocks return their shortcut and its attention its input."""

    def __init__(self, net):
        self.net = net

    def __enter__(self):
        def skip(module, args, output):
            return module.skip(args[0]) if isinstance(module, ResBlock) else args[0]

        self.hooks = [m.register_forward_hook(skip) for m in self.net.mid]

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def perturbed_prediction(run, kind):
    """The perturbed network's prediction at the condition, computed without models/nets/perturb.py."""
    from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode

    modes = {
        "pag": AttentionScoreSkipFunctionMode(),
        "seg": MeanQuery(),
        "slg": SkipResBlocks(run.denoiser.net),
    }
    return out(run.denoiser, modes[kind])


# kind -> (diffusers guider, its perturbed-scale argument, our options: every layer for pag/seg so that a
# function mode over all attention calls is the independent answer; the mid block for slg)
GUIDERS = {
    "pag": ("PerturbedAttentionGuidance", "perturbed_guidance_scale", {"pag_applied_layers": "down,mid,up"}),
    "seg": ("SmoothedEnergyGuidance", "seg_guidance_scale", {"seg_guidance_layers": "down,mid,up"}),
    "slg": ("SkipLayerGuidance", "skip_layer_guidance_scale", {"skip_layer_guidance_layers": "mid"}),
}


def diffusers_guider(kind, g, s, original):
    name, scale, _ = GUIDERS[kind]
    extra = {"pag": {"perturbed_guidance_layers": [0], "perturbed_guidance_start": 0.0,
                     "perturbed_guidance_stop": 1.0},
             "seg": {"seg_guidance_layers": [0]},
             "slg": {"skip_layer_guidance_layers": [0], "skip_layer_guidance_start": 0.0,
                     "skip_layer_guidance_stop": 1.0}}[kind]  # fmt: skip
    guider = getattr(guiders, name)(
        guidance_scale=g, use_original_formulation=original, **{scale: s}, **extra
    )
    guider.set_state(step=1, num_inference_steps=10, timestep=torch.tensor(500))
    return guider


@pytest.mark.parametrize("kind", list(GUIDERS))
@pytest.mark.parametrize(("g", "s", "original"), [(1.0, 2.5, False), (3.0, 2.5, False), (0.0, 1.5, True),
                                                  (2.0, 1.5, True)])  # fmt: skip
def test_builder_equals_diffusers_guider_forward(run, kind, g, s, original):
    params = from_diffusers(s, g, original)
    spec = GuidanceSpec(kind, params["w"], w_cfg=params["w_cfg"], options=GUIDERS[kind][2])
    cond, null = out(run.denoiser), out(NullConditioned(run.denoiser, 10))
    pert = perturbed_prediction(run, kind)
    expected = diffusers_guider(kind, g, s, original).forward(cond, null, pert).pred
    got = out(build_guided(run, spec))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (pert - cond).abs().max() > 1e-3  # the perturbation changes the prediction


@pytest.mark.parametrize(("g", "original"), [(2.5, False), (1.5, True)])
def test_dropout_guidance_equals_diffusers_auto_guidance_forward(run, g, original):
    w = auto_guidance_from_diffusers(g, original)
    spec = GuidanceSpec("dropout", w, options={"dropout": 0.3, "seed": 7})
    layers = select_layers(run.denoiser.net, RESIDUAL, "mid", "layers")
    dropped = out(PerturbedGuide(run.denoiser, layers, DropResidual(0.3, seed=7)))  # the same masks
    guider = guiders.AutoGuidance(guidance_scale=g, auto_guidance_layers=[0], dropout=0.3,
                                  use_original_formulation=original)  # fmt: skip
    guider.set_state(step=1, num_inference_steps=10, timestep=torch.tensor(500))
    expected = guider.forward(out(run.denoiser), dropped).pred
    torch.testing.assert_close(out(build_guided(run, spec)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["pag", "seg", "slg", "dropout"])
def test_the_perturbation_does_not_leak_into_the_unguided_pass(run, kind):
    """Before and after a guided call the model is unchanged, and inside it the main pass is unperturbed:
    at w = 2 the output is 2 D - D_pert with D_pert the guide's own output."""
    net = run.denoiser.net
    before = out(run.denoiser)
    guided = build_guided(run, GuidanceSpec(kind, 2.0, options={"seed": 5} if kind == "dropout" else {}))
    result = out(guided)
    assert torch.equal(out(run.denoiser), before)
    assert all(getattr(m, "perturbation", None) is None for m in net.modules())
    guide = build_guided(run, GuidanceSpec(kind, 0.0, options={"seed": 5} if kind == "dropout" else {}))
    torch.testing.assert_close(result, 2 * before - out(guide), rtol=1e-5, atol=1e-5)
    assert (result - before).abs().max() > 1e-4


def test_refusals_name_what_would_work(run, tmp_path):
    with pytest.raises(ConfigError, match="names no attention layer of this UNet; its attention layers: "):
        build_guided(run, GuidanceSpec("pag", 2.0, options={"pag_applied_layers": "up.9"}))
    with pytest.raises(ConfigError, match="schedule and w_cfg do not combine for guidance slg"):
        build_guided(run, GuidanceSpec("slg", 2.0, w_cfg=2.0, schedule=("linear", 0.1, 5.0)))
    assert GuidanceSpec("pag", 2, w_cfg=3).describe() == "PAG w=2 + CFG w=3"
    assert GuidanceSpec("seg", 2).describe() == "SEG w=2"
    assert from_diffusers(3.0) == {"w": 3.0, "w_cfg": None} and math.isclose(
        from_diffusers(3.0, 5.0)["w"], 4.0
    )


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    from diffguide.train import train

    out_dir = tmp_path_factory.mktemp("perturbed") / "digits-pag"
    # 30 fast steps without EMA: enough for the zero-initialised attention output to matter
    short = ["train.steps=30", "train.ckpt_every=30", "train.batch_size=16", "train.log_every=30",
             "train.lr=1e-2", "train.warmup_steps=0", "train.ema_decay=0", "sample.n=4"]  # fmt: skip
    cfg = apply_overrides(load_preset("digits-cfg"), [*UNET, *short])
    train(cfg, out_dir, progress=False)
    return out_dir


def test_cli_samples_a_unet_run_with_pag_and_cfg_like_the_library(unet_run, tmp_path):
    from PIL import Image

    from diffguide.plots.images import grid_image
    from diffguide.samplers.generation import generate, sigma_grid

    r = run_cli("sample", str(unet_run), "--out", str(tmp_path / "x.png"), "--class", "3", "--n", "4",
                "--guidance", "pag", "--w", "2", "--w-cfg", "1.5", "--guidance-option",
                "pag_applied_layers=mid,up", "--steps", "3", "--no-metrics")  # fmt: skip
    assert r.returncode == 0, r.stderr
    loaded = load_run(unet_run)
    s = loaded.config.sample
    sigmas = sigma_grid(s.grid, 3, loaded.process, s.sigma_min, s.sigma_max, s.rho)
    spec = GuidanceSpec("pag", 2.0, w_cfg=1.5, options={"pag_applied_layers": "mid,up"})
    expected = generate(build_guided(loaded, spec), 4, loaded.dataset.shape, sigmas=sigmas,
                        sampler=s.sampler, seed=0, cond=3)  # fmt: skip
    written = np.asarray(Image.open(tmp_path / "x.png")).astype(int)
    assert np.abs(written - np.asarray(grid_image(expected)).astype(int)).max() <= 1  # 8-bit rounding
    cfg_only = generate(build_guided(loaded, GuidanceSpec("cfg", 1.5)), 4, loaded.dataset.shape,
                        sigmas=sigmas, sampler=s.sampler, seed=0, cond=3)  # fmt: skip
    assert np.abs(written - np.asarray(grid_image(cfg_only)).astype(int)).max() > 4  # PAG did something
