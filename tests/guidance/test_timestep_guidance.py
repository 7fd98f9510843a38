"""Time-step guidance (TSG): the guide is the same network with its noise (time-step) embedding
perturbed, t_emb + s t^alpha n. Its guide equals the network rebuilt with an embedding that adds the
noise written out independently (a wrapped module, no hook); s = 0 gives guide == model and so the
unguided output at every w; w = 1 is the unguided model; a seed fixes the noise; the hook never leaks
out of the guide's pass; diffusers models are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffguide.errors import ConfigError
from diffguide.guidance import guidance
from diffguide.guidance.perturbed import TimestepPerturbedGuide
from diffguide.guidance.spec import GuidanceSpec, build_guided, check
from tests.helpers import random_run


@pytest.fixture(scope="module", params=["tiny", "digits-cfg"])
def run(request):
    """The 2D MLP and the image U-Net: both read their noise level through `noise_emb`."""
    return random_run(
        request.param, ["model.channels=8", "model.emb_dim=16"] if request.param != "tiny" else []
    )


def inputs(run, n=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *run.dataset.shape, generator=g)
    return x, torch.logspace(-1, 1, n), torch.arange(n) % run.num_classes


def out(denoiser, run):
    with torch.no_grad():
        return denoiser(*inputs(run))


class AddNoise(nn.Module):
    """t_emb + s t^alpha n, n ~ N(0, I) [N, D] from its own generator: TSG's formula, written out."""

    def __init__(self, embedding, s, alpha, seed, sigma):
        super().__init__()
        self.embedding, self.s, self.alpha, self.sigma = embedding, s, alpha, sigma
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, c_noise):
        e = self.embedding(c_noise)
        n = torch.randn(e.shape, generator=self.generator)
        return e + (self.s * self.sigma.double() ** self.alpha).float()[:, None] * n


@pytest.mark.parametrize(("s", "alpha"), [(0.5, 0.0), (0.3, 1.0)])
def test_the_guide_is_the_network_with_a_noisy_embedding(run, s, alpha):
    guide = TimestepPerturbedGuide(run.denoiser, run.denoiser.net.noise_emb, s, alpha, seed=4)
    reference = copy.deepcopy(run.denoiser)
    sigma = inputs(run)[1]
    reference.net.noise_emb = AddNoise(reference.net.noise_emb, s, alpha, 4, sigma)
    for _ in range(2):  # fresh noise per call, the same sequence from the same seed
        torch.testing.assert_close(out(guide, run), out(reference, run), rtol=1e-6, atol=1e-6)
    assert (out(guide, run) - out(run.denoiser, run)).abs().max() > 1e-3  # the guide differs


def test_scale_0_is_the_model_and_w_1_is_unguided(run):
    plain = out(run.denoiser, run)
    zero = TimestepPerturbedGuide(run.denoiser, run.denoiser.net.noise_emb, 0.0, seed=1)
    assert torch.equal(out(zero, run), plain)
    for w in (0.0, 2.0, 7.5):
        spec = GuidanceSpec("tsg", w, options={"s": 0.0, "alpha": 1.0})
        assert torch.equal(out(build_guided(run, spec), run), plain)
    assert torch.equal(out(build_guided(run, GuidanceSpec("tsg", 1.0, options={"s": 2.0})), run), plain)


def test_a_seed_fixes_the_noise_and_the_hook_does_not_leak(run):
    plain = out(run.denoiser, run)
    a = out(build_guided(run, GuidanceSpec("tsg", 3.0, options={"seed": 9})), run)
    b = out(build_guided(run, GuidanceSpec("tsg", 3.0, options={"seed": 9})), run)
    c = out(build_guided(run, GuidanceSpec("tsg", 3.0, options={"seed": 10})), run)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-4 and (a - plain).abs().max() > 1e-4
    assert torch.equal(out(run.denoiser, run), plain)
    assert not run.denoiser.net.noise_emb._forward_hooks
    # guided = D_pert + 3 (D - D_pert): the main pass inside the guided call is unperturbed
    guide = TimestepPerturbedGuide(run.denoiser, run.denoiser.net.noise_emb, 1.0, seed=9)
    expected = out(guidance(run.denoiser, guide, 3.0), run)
    assert torch.equal(a, expected)


def test_with_cfg_and_the_refusals(run):
    spec = GuidanceSpec("tsg", 2.0, w_cfg=1.5)
    assert spec.describe() == "TSG w=2 + CFG w=1.5"
    assert out(build_guided(run, spec), run).shape == inputs(run)[0].shape
    with pytest.raises(
        ConfigError, match=r"TSG s \(the embedding's noise scale\) must be a finite number >= 0"
    ):
        check(GuidanceSpec("tsg", 2.0, options={"s": -1.0}), run)
    with pytest.raises(ConfigError, match="option alpha of guidance tsg must be a number"):
        check(GuidanceSpec("tsg", 2.0, options={"alpha": "x"}))


def test_a_diffusers_model_is_refused():
    diffusers = pytest.importorskip("diffusers")
    from diffguide.adapters.diffusers import DiffusersModel, diffusers_denoiser

    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)  # fmt: skip
    denoiser = diffusers_denoiser(unet, dict(diffusers.DDPMScheduler().config))
    model = DiffusersModel(denoiser, denoiser.process, (1, 8, 8), denoiser.target)
    with pytest.raises(
        ConfigError, match="^guidance tsg perturbs the network's noise embedding, which is done"
    ):
        check(GuidanceSpec("tsg", 2.0), model)
