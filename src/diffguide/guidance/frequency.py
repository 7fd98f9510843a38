"""Frequency-decoupled guidance (FDG): CFG applied per band of a Laplacian pyramid, each band at its
own weight (Sadat, Vontobel, Salehi & Weber 2025, "Guidance in the frequency domain enables
high-fidelity sampling at low CFG scales", arXiv 2506.19713).

The pyramid (Burt & Adelson 1983) is written here with torch ops, as kornia builds it for diffusers'
guider: `down` blurs with the 5 x 5 binomial kernel (outer product of [1, 4, 6, 4, 1] / 16, reflect
padding) and halves each side by the 2 x 2 mean (kornia's bilinear halving of an even side); `up`
doubles each side bilinearly (align_corners=False) and blurs. Band i of L is Gaussian level i minus
`up` of level i + 1, the last band the coarsest Gaussian level; rebuilding from the coarsest band
(`img = up(img) + band`) returns the input up to float rounding. Sides that do not halve L - 1 times
are reflect-padded at the right and bottom to the next multiple of 2^(L - 1) (kornia's
`minimal_padding=True`) and the result cut back.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from diffguide.errors import ConfigError
from diffguide.guidance.methods import TwoPredictionGuidance, _dot, _finite

_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)  # the binomial filter of the pyramid, / 16


def _blur(x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] blurred by the 5 x 5 binomial kernel, per channel, reflect padding."""
    n, c, h, w = x.shape
    taps = torch.tensor(_TAPS, dtype=x.dtype, device=x.device) / 16
    kernel = (taps[:, None] * taps[None, :]).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)


def pyramid_down(x: torch.Tensor) -> torch.Tensor:
    """One level down: blur, then the 2 x 2 mean (sides even)."""
    return F.avg_pool2d(_blur(x), 2)


def pyramid_up(x: torch.Tensor) -> torch.Tensor:
    """One level up: bilinear doubling of each side (align_corners=False), then blur."""
    return _blur(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """x [N, C, H, W] (sides divisible by 2^(levels - 1)) -> `levels` bands, finest first."""
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(pyramid_down(gaussian[-1]))
    bands = [fine - pyramid_up(coarse) for fine, coarse in zip(gaussian, gaussian[1:])]
    return [*bands, gaussian[-1]]


def from_pyramid(bands: list[torch.Tensor]) -> torch.Tensor:
    """The image of a Laplacian pyramid (the inverse of `laplacian_pyramid`)."""
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = pyramid_up(image) + band
    return image


def check_image(x: torch.Tensor, levels: int, what: str = "frequency-decoupled guidance") -> None:
    """ConfigError unless x is [N, C, H, W] with both sides >= 2^levels (each blurred level >= 4 pixels)."""
    if x.ndim != 4:
        raise ConfigError(
            f"{what} splits images into frequency bands (a Laplacian pyramid over H x W); it needs "
            f"[N, C, H, W] samples, got shape {tuple(x.shape)}"
        )
    if min(x.shape[-2:]) < 2**levels:
        raise ConfigError(
            f"{what} with levels={levels} needs images of at least {2**levels} x {2**levels} pixels, got "
            f"{x.shape[-2]} x {x.shape[-1]}; use fewer levels"
        )


class FDG(TwoPredictionGuidance):
    """Frequency-decoupled guidance: main and guide split into `levels` Laplacian bands; band l gets
    main_l + (w_l - 1) shift_l with shift_l = main_l - guide_l (its part parallel to main_l scaled by
    `parallel_weight`, as APG's eta), and the bands are put back together.

    w is the finest band's weight (the paper's w_high), `w_low` the coarsest band's; with more than two
    levels the weights in between are spaced linearly. With equal weights (w_low = w) and
    parallel_weight = 1 this is CFG at w (the pyramid is linear and rebuilds its input). `rescale` is
    CFG rescale (Lin et al. 2024) on the rebuilt result, in eps space as everywhere in diffguide.
    Conversion from diffusers' FrequencyDecoupledGuidance: see `fdg_from_diffusers`.
    """

    def __init__(
        self,
        main,
        guide,
        w,
        *,
        w_low: float = 1.0,
        levels: int = 2,
        parallel_weight: float = 1.0,
        rescale: float = 0.0,
        **kwargs,
    ):
        super().__init__(main, guide, w, **kwargs)
        self.w_low = _finite(w_low, "FDG w_low", low=0.0)
        if isinstance(levels, bool) or not float(levels).is_integer() or not 2 <= levels <= 8:
            raise ConfigError(f"FDG levels must be an integer in [2, 8], got {levels}")
        self.levels = int(levels)
        self.parallel_weight = _finite(parallel_weight, "FDG parallel_weight")
        self.rescale = _finite(rescale, "FDG rescale", low=0.0, high=1.0)

    def level_weights(self) -> list[float]:
        """The bands' weights, finest first: w to w_low, linearly spaced."""
        last = self.levels - 1
        return [self.w + (self.w_low - self.w) * i / last for i in range(self.levels)]

    def guiding(self, sigma, weights):
        changed = torch.stack([self.scheduled(w, sigma) != 1 for w in self.level_weights()])
        return changed.any(dim=0)

    def combine(self, main, guide, w, sigma):
        check_image(main, self.levels)
        h, wd = main.shape[-2:]
        stride = 2 ** (self.levels - 1)
        pad = (0, -wd % stride, 0, -h % stride)
        if any(pad):  # reflect-pad right and bottom so that every side halves levels - 1 times
            main, guide = F.pad(main, pad, mode="reflect"), F.pad(guide, pad, mode="reflect")
        bands = []
        pairs = zip(laplacian_pyramid(main, self.levels), laplacian_pyramid(guide, self.levels))
        for (c, u), w_level in zip(pairs, self.level_weights()):
            shift = c - u
            if self.parallel_weight != 1:
                unit = c / c.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, 1, 1, 1)
                parallel = _dot(shift, unit) * unit
                shift = shift + (self.parallel_weight - 1) * parallel
            weight = self.scheduled(w_level, sigma).to(c.dtype).reshape(-1, 1, 1, 1)
            bands.append(c + (weight - 1) * shift)
        return from_pyramid(bands)[..., :h, :wd]


def fdg_from_diffusers(
    guidance_scales,
    parallel_weights: float | None = None,
    guidance_rescale: float = 0.0,
    use_original_formulation: bool = False,
) -> dict:
    """Our FDG parameters {w, w_low, levels, parallel_weight, rescale} for diffusers'
    FrequencyDecoupledGuidance(guidance_scales=[s_0 (finest), ..., s_L-1], ...): w = s_0 and w_low =
    s_L-1 (each + 1 in the original formulation). Refused where ours has no equal: scales not linearly
    spaced, per-level parallel weights or rescales, or parallel weights != 1 outside the original
    formulation (diffusers then forms guide + s shift', which is not main at s = 1)."""
    scales = [float(s) + bool(use_original_formulation) for s in guidance_scales]
    levels = len(scales)
    if levels < 2:
        raise ConfigError(f"FDG needs >= 2 levels, got guidance_scales={list(guidance_scales)}")
    steps = [(b - a) for a, b in zip(scales, scales[1:])]
    if max(steps) - min(steps) > 1e-9 * max(1.0, *map(abs, scales)):
        raise ConfigError(
            f"our FDG spaces the level weights linearly; got guidance_scales={list(guidance_scales)}"
        )
    if isinstance(parallel_weights, (list, tuple)) or isinstance(guidance_rescale, (list, tuple)):
        raise ConfigError("our FDG takes one parallel_weight and one rescale for every level")
    parallel = 1.0 if parallel_weights is None else float(parallel_weights)
    if parallel != 1 and not use_original_formulation:
        raise ConfigError("parallel_weights != 1 converts from use_original_formulation=True only")
    return {
        "w": scales[0],
        "w_low": scales[-1],
        "levels": levels,
        "parallel_weight": parallel,
        "rescale": float(guidance_rescale),
    }
