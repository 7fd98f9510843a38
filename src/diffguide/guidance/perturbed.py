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

from torch import nn

from diffguide.models.nets.perturb import perturbed


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
