"""The field's guidance methods beyond the plain combinator, each a denoiser combinator.

All take a main denoiser and a guide (the same net with the null condition for the CFG family, or
a weaker net) and return a denoiser. Weights use our convention: w = 1 is no guidance and
w = s is diffusers' `guidance_scale = s` (the Ho & Salimans w' is w - 1). Each method works in one of
two spaces of the predictions:

- `"x0"`: the denoiser outputs D (what the samplers consume; the space of the APG paper);
- `"eps"`: the implied noise eps = (x - D) / sigma, which equals an eps-prediction network's raw
  output (what diffusers' guiders see for eps models).

Plain CFG is affine, so it is the same in both spaces; the methods below are not, so the space is a
parameter. Every method also takes a guidance interval and a weight schedule w(sigma) (`schedule`),
applied per sample; outside the interval the output is the main denoiser's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from diffguide.denoiser import append_dims, batch_sigma
from diffguide.errors import ConfigError, lookup
from diffguide.guidance.combinators import Interval, _rescale, _Wrap, check_interval, check_weight

SPACES = ("x0", "eps")


def _module(fn: Callable) -> nn.Module:
    return fn if isinstance(fn, nn.Module) else _Wrap(fn)


def _finite(value: float, what: str, low: float | None = None, high: float | None = None) -> float:
    value = float(value)
    ok = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        rng = (
            f" in [{low}, {high}]"
            if low is not None and high is not None
            else (f" >= {low}" if low is not None else "")
        )
        raise ConfigError(f"{what} must be a finite number{rng}, got {value}")
    return value


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over all but the batch dimension, kept broadcastable: [N, 1, ...]."""
    return (a * b).sum(dim=_dims(a), keepdim=True)


# ---------------------------------------------------------------------------------------------
# weight schedules w(sigma)


class WeightSchedule:
    """w(sigma) = 1 + (w - 1) m(sigma), with m in [0, 1] a function of the noise level.

    u = (log sigma_hi - log sigma) / (log sigma_hi - log sigma_lo), clipped to [0, 1], runs from 0 at
    sigma_hi to 1 at sigma_lo. `constant`: m = 1. `step`: m = 1 inside [sigma_lo, sigma_hi], else 0 (the
    guidance interval of Kynkaanniemi et al. 2024). `linear`: m = u and `cosine`: m = (1 - cos(pi u)) / 2,
    guidance growing as the noise falls (the increasing schedules of Wang et al. 2024, "Analysis of
    classifier-free guidance weight schedulers").
    """

    KINDS = ("constant", "step", "linear", "cosine")

    def __init__(self, kind: str = "constant", sigma_lo: float = 0.0, sigma_hi: float = math.inf):
        self.kind = lookup("weight schedule", kind, {k: k for k in self.KINDS})
        self.sigma_lo = _finite(sigma_lo, "schedule sigma_lo", low=0.0) if sigma_lo else 0.0
        self.sigma_hi = float(sigma_hi)
        if not self.sigma_hi > self.sigma_lo or math.isnan(self.sigma_hi):
            raise ConfigError(f"a weight schedule needs sigma_lo < sigma_hi, got {sigma_lo} and {sigma_hi}")
        if kind in ("linear", "cosine") and not (self.sigma_lo > 0 and math.isfinite(self.sigma_hi)):
            raise ConfigError(
                f"the {kind} schedule runs over log sigma: give 0 < sigma_lo < sigma_hi < inf, "
                f"got {sigma_lo} and {sigma_hi}"
            )

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        """m(sigma) [N] in [0, 1]."""
        if self.kind == "constant":
            return torch.ones_like(sigma)
        if self.kind == "step":
            return ((sigma >= self.sigma_lo) & (sigma <= self.sigma_hi)).to(sigma.dtype)
        lo, hi = math.log(self.sigma_lo), math.log(self.sigma_hi)
        u = ((hi - sigma.clamp(min=1e-30).log()) / (hi - lo)).clamp(0, 1)
        return u if self.kind == "linear" else (1 - torch.cos(math.pi * u)) / 2


# ---------------------------------------------------------------------------------------------
# the shared frame: two predictions, a space, an interval, a schedule


class TwoPredictionGuidance(nn.Module):
    """Evaluate main and guide, move both into `space`, combine them, move back; main outside the interval."""

    def __init__(
        self,
        main: Callable,
        guide: Callable,
        w: float,
        *,
        space: str = "x0",
        interval: Interval = None,
        schedule: WeightSchedule | None = None,
    ):
        super().__init__()
        self.main, self.guide = _module(main), _module(guide)
        self.w = check_weight(w)
        self.space = lookup("guidance space", space, {s: s for s in SPACES})
        self.interval = check_interval(interval)
        self.schedule = schedule

    rescale = 0.0  # CFG rescale phi (Lin et al. 2024) on the result, in eps space; FDG sets it

    def scheduled(self, w: float, sigma: torch.Tensor) -> torch.Tensor:
        """[N] per-sample weight w(sigma) = 1 + (w - 1) m(sigma) of a weight w."""
        if self.schedule is None:
            return torch.full_like(sigma, w)
        m = self.schedule(sigma)
        return torch.where(m == 1, w, 1 + (w - 1) * m)  # exactly w where m = 1

    def weights(self, sigma: torch.Tensor) -> torch.Tensor:
        """[N] per-sample w(sigma)."""
        return self.scheduled(self.w, sigma)

    def guiding(self, sigma: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[N] bool: the samples this method changes (w = 1 is no guidance)."""
        return weights != 1

    def active(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.interval
        return (sigma >= lo) & (sigma <= hi)

    def to_space(self, d: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return d if self.space == "x0" else (x - d) / s

    def from_space(self, v: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return v if self.space == "x0" else x - s * v

    def combine(self, main: torch.Tensor, guide: torch.Tensor, w: torch.Tensor, sigma: torch.Tensor):
        """The method: main, guide [N, ...] in `space`, w [N, 1, ...] -> guided prediction in `space`."""
        return guide + w * (main - guide)

    def forward(self, x, sigma, cond=None):
        sigma = batch_sigma(sigma, x)  # [N]
        d_main = self.main(x, sigma, cond)
        weights = self.weights(sigma)
        mask = self.active(sigma) & self.guiding(sigma, weights)  # no guidance: the main output exactly
        if not bool(mask.any()):
            return d_main
        d_guide = self.guide(x, sigma, cond)
        s = append_dims(sigma, x.ndim).to(x.dtype).clamp(min=1e-12)
        w = append_dims(weights, x.ndim).to(x.dtype)
        a, b = self.to_space(d_main, x, s), self.to_space(d_guide, x, s)
        out = self.from_space(self.combine(a, b, w, sigma), x, s)
        if self.rescale > 0:
            out = _rescale(out, d_main, x, sigma, self.rescale)
        return out if bool(mask.all()) else torch.where(append_dims(mask, x.ndim), out, d_main)


class ScheduledGuidance(TwoPredictionGuidance):
    """guide + w(sigma) (main - guide): the plain combinator with a weight schedule."""


# ---------------------------------------------------------------------------------------------
# APG


class APG(TwoPredictionGuidance):
    """Adaptive projected guidance (Sadat, Hilliges & Weber 2024, "Eliminating oversaturation and
    artifacts of high guidance scales in diffusion models", Algorithm 1).

    diff = main - guide, averaged with momentum (running = diff + momentum * running; the paper uses
    momentum < 0), its norm clipped to `norm_threshold` (r; 0 = off), split into the part parallel to
    the main prediction and the orthogonal rest; out = main + (w - 1) (orthogonal + eta * parallel).
    With eta = 1, r = 0 and momentum 0 this is CFG exactly.

    Momentum keeps one running average per noise level of a trajectory: it is updated when sigma falls
    below the last level seen, recomputed from the previous level's average when a sampler evaluates
    the same level again (Heun's correction at sigma_next and the next step's evaluation at the same
    sigma), and reset when sigma rises (a new trajectory or batch).

    space: "x0" (default: the paper's formulation on denoised outputs) or "eps" (diffusers applies APG
    to the raw model output, which is eps for eps-prediction models). diffusers' AdaptiveProjectedGuidance
    with use_original_formulation=True, guidance_scale = s, eta, adaptive_projected_guidance_rescale = r and
    adaptive_projected_guidance_momentum = m is this with w = s + 1 (see `apg_from_diffusers`).
    """

    def __init__(self, main, guide, w, *, eta=1.0, norm_threshold=0.0, momentum=0.0, **kwargs):
        super().__init__(main, guide, w, **kwargs)
        self.eta = _finite(eta, "APG eta")
        self.norm_threshold = _finite(norm_threshold, "APG norm_threshold", low=0.0)
        self.momentum = _finite(momentum, "APG momentum", low=-1.0, high=1.0)
        self.reset()

    def reset(self) -> None:
        self._level, self._before, self._running = None, None, None

    def _average(self, diff: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.momentum == 0:
            return diff
        level = float(sigma.max())
        same_shape = self._running is not None and self._running.shape == diff.shape
        if self._level is None or level > self._level or not same_shape:
            self._before = torch.zeros_like(diff)  # a new trajectory
        elif level < self._level:
            self._before = self._running  # a new, lower level: the last average becomes the past
        self._level = level
        self._running = diff + self.momentum * self._before
        return self._running

    def combine(self, main, guide, w, sigma):
        diff = self._average(main - guide, sigma)
        if self.norm_threshold > 0:
            norm = diff.flatten(1).norm(dim=1).reshape(-1, *[1] * (diff.ndim - 1))
            diff = diff * torch.clamp(self.norm_threshold / norm.clamp(min=1e-30), max=1.0)
        unit = main / main.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, *[1] * (main.ndim - 1))
        parallel = _dot(diff, unit) * unit
        return main + (w - 1) * (diff - parallel + self.eta * parallel)


def apg_from_diffusers(guidance_scale: float, eta: float = 1.0, rescale: float = 15.0, momentum=None) -> dict:
    """Our APG parameters for diffusers' AdaptiveProjectedGuidance(use_original_formulation=True, ...)."""
    return {"w": guidance_scale + 1, "eta": eta, "norm_threshold": rescale, "momentum": momentum or 0.0}


# ---------------------------------------------------------------------------------------------
# CFG-Zero*, TCFG, MAMBO-G


class CFGZeroStar(TwoPredictionGuidance):
    """CFG-Zero* (Fan et al. 2025, "CFG-Zero*: improved classifier-free guidance for flow matching
    models"): the guide scaled by s* = <main, guide> / |guide|^2 (the least-squares fit of the main
    prediction by the guide, per sample), out = s* guide + w (main - s* guide); zero-init: for
    sigma >= `zero_init_sigma` the output is x itself, so the probability-flow ODE does not move (the
    paper zeroes the first steps' velocity of a flow model; in our scale-free coordinates a zero
    derivative (x - D) / sigma means D = x). diffusers' ClassifierFreeZeroStarGuidance(guidance_scale=s)
    is w = s (its zero_init_steps count steps; ours names the noise level)."""

    def __init__(self, main, guide, w, *, zero_init_sigma: float | None = None, **kwargs):
        super().__init__(main, guide, w, **kwargs)
        if zero_init_sigma is not None and not float(zero_init_sigma) >= 0:  # NaN fails too
            raise ConfigError(f"zero_init_sigma must be >= 0 (inf: off), got {zero_init_sigma}")
        off = zero_init_sigma is None or math.isinf(zero_init_sigma)
        self.zero_init_sigma = None if off else float(zero_init_sigma)

    def combine(self, main, guide, w, sigma):
        scale = _dot(main, guide) / (_dot(guide, guide) + 1e-8)
        return scale * guide + w * (main - scale * guide)

    def forward(self, x, sigma, cond=None):
        out = super().forward(x, sigma, cond)
        if self.zero_init_sigma is None:
            return out
        frozen = append_dims(batch_sigma(sigma, x) >= self.zero_init_sigma, x.ndim)
        return torch.where(frozen, x, out)


class TCFG(TwoPredictionGuidance):
    """Tangential damping CFG (Kwon et al. 2025, "TCFG: tangential damping classifier-free guidance"):
    per sample, the SVD of the 2 x P matrix [main; guide] gives the main direction; the guide is
    replaced by its projection onto that first right-singular vector (its tangential component removed),
    then guide' + w (main - guide'). diffusers' TangentialClassifierFreeGuidance(guidance_scale=s) is w = s."""

    def combine(self, main, guide, w, sigma):
        stacked = torch.stack([main.flatten(1), guide.flatten(1)], dim=1)  # [N, 2, P]
        _, _, vh = torch.linalg.svd(stacked, full_matrices=False)
        first = vh[:, :1]  # [N, 1, P]
        projected = (guide.flatten(1)[:, None] @ first.transpose(1, 2)) @ first  # [N, 1, P]
        guide = projected.reshape(guide.shape)
        return guide + w * (main - guide)


class MamboG(TwoPredictionGuidance):
    """Magnitude-aware guidance (MAMBO-G, 2025, arXiv 2508.03442): the weight falls when the update is
    large relative to the guide, w_eff = 1 + (w - 1) exp(-alpha |main - guide| / |guide|), then
    guide + w_eff (main - guide). diffusers' MagnitudeAwareGuidance(guidance_scale=s, alpha) is w = s."""

    def __init__(self, main, guide, w, *, alpha: float = 8.0, **kwargs):
        super().__init__(main, guide, w, **kwargs)
        self.alpha = _finite(alpha, "MAMBO-G alpha", low=0.0)

    def combine(self, main, guide, w, sigma):
        diff = main - guide
        ratio = diff.flatten(1).norm(dim=1) / guide.flatten(1).norm(dim=1).clamp(min=1e-30)
        ratio = ratio.reshape(-1, *[1] * (main.ndim - 1))
        return guide + (1 + (w - 1) * torch.exp(-self.alpha * ratio)) * diff


# ---------------------------------------------------------------------------------------------
# dynamic thresholding and independent condition guidance


class DynamicThresholding(nn.Module):
    """Dynamic thresholding of x0 (Saharia et al. 2022, "Photorealistic text-to-image diffusion models
    with deep language understanding", sec. 2.3): s = the `percentile` quantile of |x0| per sample,
    s = clamp(s, 1, max_value); x0 <- clamp(x0, -s, s) / s. diffusers' DDPMScheduler(thresholding=True,
    dynamic_thresholding_ratio=percentile, sample_max_value=max_value) does the same to its x0."""

    def __init__(self, denoiser: Callable, percentile: float = 0.995, max_value: float = 1.0):
        super().__init__()
        self.denoiser = _module(denoiser)
        self.percentile = _finite(percentile, "dynamic thresholding percentile", 0.0, 1.0)
        self.max_value = _finite(max_value, "dynamic thresholding max_value", low=1.0)

    def forward(self, x, sigma, cond=None):
        x0 = self.denoiser(x, sigma, cond)
        s = torch.quantile(x0.abs().flatten(1).float(), self.percentile, dim=1).to(x0.dtype)
        s = append_dims(s.clamp(min=1.0, max=self.max_value), x0.ndim)
        return torch.clamp(x0, -s, s) / s


class RandomConditioned(nn.Module):
    """The same denoiser fed a random class instead of the null one: the guide of independent condition
    guidance (ICG; Sadat et al. 2024, "No training, no problem: rethinking classifier-free guidance for
    diffusion models"), which lets CFG guide a model trained without label dropout. Classes are drawn
    uniformly, per sample, from a generator seeded once (so a run is reproducible)."""

    def __init__(self, denoiser: Callable, num_classes: int, seed: int = 0):
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"independent condition guidance needs >= 2 classes, got {num_classes}")
        self.denoiser = _module(denoiser)
        self.num_classes = int(num_classes)
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, x, sigma, cond=None):
        labels = torch.randint(0, self.num_classes, (x.shape[0],), generator=self.generator)
        return self.denoiser(x, sigma, labels.to(x.device))
