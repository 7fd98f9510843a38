"""Guides that are the same network, perturbed: PAG, SEG, skip-layer guidance and dropout guidance.

Autoguidance (Karras et al. 2024) guides with a worse model; these methods make the worse model from
the network itself by perturbing chosen layers during the guide's forward pass only
(models/nets/perturb.py holds the perturbations and the `perturbed` context manager):

    D_w = D_pert + w (D - D_pert)          (w = 1: no guidance; with CFG as well, see below)

- PAG, perturbed-attention guidance (Ahn et al. 2024, arXiv 2403.17377): identity self-attention.
- SEG, smoothed-energy guidance (Hong 2024, arXiv 2408.00760): the attention query blurred by a
  Gaussian of std seg_blur_sigma.
- SLG, skip-layer guidance (Stability AI, SD3.5; diffusers' SkipLayerGuidance): chosen layers skipped.
- dropout guidance (diffusers' AutoGuidance guider): dropout on chosen layers' residual branch.
- TSG, time-step guidance (Sadat et al. 2024, "No training, no problem: rethinking classifier-free
  guidance for diffusion models", sec. 5): the noise (time-step) embedding perturbed,
  t_emb + s t^alpha n with n ~ N(0, I); no diffusers guider.

With a CFG weight w_cfg as well (a class-conditional model), D_w = D + (w - 1)(D - D_pert) +
(w_cfg - 1)(D - D(null)), the sum diffusers' guiders form when both are on.

Conversions from diffusers' guiders (`from_diffusers`): their `forward` with guidance_scale g and a
perturbed scale s (perturbed_guidance_scale, seg_guidance_scale, skip_layer_guidance_scale) gives
    CFG off (g = 1):  pred_pert + s (pred - pred_pert)                  -> w = s
    CFG on:           pred_null + g (pred - pred_null) + s (pred - pred_pert) -> w = s + 1, w_cfg = g
and use_original_formulation=True adds 1 to each scale. AutoGuidance(guidance_scale=g, dropout=p) is
w = g (g + 1 in the original formulation), its prediction "uncond" being the dropout pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from diffguide.denoiser import batch_sigma
from diffguide.errors import ConfigError
from diffguide.models.nets.perturb import noisy_embedding, perturbed


class PerturbedGuide(nn.Module):
    """The denoiser evaluated with `perturbation` on `layers` of its own network (only for this call)."""

    def __init__(self, denoiser: Callable, layers: Sequence[nn.Module], perturbation):
        super().__init__()
        self.denoiser = denoiser
        self.layers = list(layers)
        self.perturbation = perturbation

    def forward(self, x, sigma, cond=None):
        with perturbed(self.layers, self.perturbation):
            return self.denoiser(x, sigma, cond)


class TimestepPerturbedGuide(nn.Module):
    """TSG's guide: the denoiser with its net's noise embedding (`embedding`, e.g. net.noise_emb) perturbed
    to t_emb + s t^alpha n, n ~ N(0, I) per sample and call, from a generator seeded once.

    t is the noise level sigma (EDM's time, sigma(t) = t; for every process the samplers' coordinate), so
    alpha = 0 (the default) perturbs by s at every level. The preconditioning (c_in, c_skip, c_out) and
    the noise input c_noise are untouched: only the embedding the blocks read changes.
    """

    def __init__(self, denoiser, embedding: nn.Module, s: float = 1.0, alpha: float = 0.0, seed: int = 0):
        super().__init__()
        s, alpha = float(s), float(alpha)
        if not 0 <= s < float("inf"):  # NaN fails too
            raise ConfigError(f"TSG s (the embedding's noise scale) must be a finite number >= 0, got {s}")
        if not abs(alpha) < float("inf"):
            raise ConfigError(f"TSG alpha (the exponent of t in s t^alpha) must be finite, got {alpha}")
        self.denoiser = denoiser
        self.embedding = embedding
        self.s, self.alpha = s, alpha
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, x, sigma, cond=None):
        scale = self.s * batch_sigma(sigma, x).double() ** self.alpha  # [N]: s t^alpha, t = sigma
        with noisy_embedding(self.embedding, scale, self.generator):
            return self.denoiser(x, sigma, cond)


def from_diffusers(
    perturbed_scale: float,
    guidance_scale: float = 1.0,
    use_original_formulation: bool = False,
) -> dict:
    """Our {w, w_cfg} for diffusers' PerturbedAttentionGuidance / SmoothedEnergyGuidance /
    SkipLayerGuidance(guidance_scale=g, <perturbed>_scale=s, use_original_formulation); w_cfg is None
    when diffusers' CFG is off (g = 1, or g = 0 in the original formulation)."""
    if use_original_formulation:
        return {"w": perturbed_scale + 1, "w_cfg": None if guidance_scale == 0 else guidance_scale + 1}
    return {
        "w": perturbed_scale + (guidance_scale != 1),
        "w_cfg": None if guidance_scale == 1 else guidance_scale,
    }


def auto_guidance_from_diffusers(guidance_scale: float, use_original_formulation: bool = False) -> float:
    """Our w for diffusers' AutoGuidance(guidance_scale=g, dropout=p): g, or g + 1 in the original
    formulation (our dropout option is p)."""
    return guidance_scale + 1 if use_original_formulation else guidance_scale
