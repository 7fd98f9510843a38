"""Guidance as denoiser combinators: each takes denoisers and returns a denoiser.

The one formula is

    D_w(x, sigma, c) = D_guide(x, sigma, c') + w * (D_main(x, sigma, c) - D_guide(x, sigma, c'))

with w = 1 meaning no guidance. Classifier-free guidance (Ho & Salimans 2022) and autoguidance
(Karras et al. 2024) are this formula with a different guide: the same network fed the null condition
c' = null, or a weaker network (smaller and/or trained less) fed the same condition. Other
conventions map onto w as follows (see docs/guidance.md):

    Ho & Salimans (1 + w') D(c) - w' D(null)   ->  w = w' + 1
    diffusers guidance_scale s                 ->  w = s

In score terms the formula is score_guide + w (score_main - score_guide) because the score is affine
in D at fixed (x, sigma): score = (D - x) / sigma^2. Options of the same combinator, not new samplers:
several guides at once (each adds (w_j - 1) (D_main - D_guide_j)), a guidance interval
(Kynkäänniemi et al. 2024: guide only for sigma in [lo, hi]), CFG rescale (Lin et al. 2024) and a
classifier gradient (Dhariwal & Nichol 2021): D += scale * sigma^2 * grad_x log p(y | x, sigma).
Everything broadcasts with `append_dims`, so [N, 2] points and [N, C, H, W] images share the code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from diffguide.conditioning import null_condition
from diffguide.denoiser import append_dims, batch_sigma
from diffguide.errors import ConfigError, lookup

Interval = tuple[float, float] | None


def check_weight(w: float, what: str = "guidance weight w") -> float:
    """w as a float, refusing negative values (w = 1 is no guidance, 0 is the guide alone)."""
    w = float(w)
    if not w >= 0:  # also catches NaN
        raise ConfigError(f"{what} must be >= 0 (1 = no guidance), got {w}")
    if w == float("inf"):  # every sample would come out NaN
        raise ConfigError(f"{what} must be finite (1 = no guidance), got {w}")
    return w


def check_interval(interval: Interval) -> Interval:
    """(lo, hi) as floats with 0 <= lo, or None for 'every sigma'. lo > hi is the empty interval."""
    if interval is None:
        return None
    if len(interval) != 2:
        raise ConfigError(f"a guidance interval is (sigma_lo, sigma_hi), got {interval!r}")
    lo, hi = float(interval[0]), float(interval[1])
    if lo < 0 or hi < 0:
        raise ConfigError(f"guidance interval bounds must be >= 0, got ({lo}, {hi})")
    return lo, hi


class NullConditioned(nn.Module):
    """The same denoiser fed the null condition: the guide of classifier-free guidance."""

    def __init__(self, denoiser: Callable, num_classes: int):
        super().__init__()
        self.denoiser = denoiser
        self.num_classes = int(num_classes)

    def forward(self, x, sigma, cond=None):
        return self.denoiser(x, sigma, null_condition(cond, self.num_classes))


class Guided(nn.Module):
    """D = D_main + sum_j (w_j - 1) (D_main - D_guide_j) [+ scale sigma^2 grad log p(y|x)], on an interval.

    With one guide this is exactly guide + w (main - guide). Outside the interval [lo, hi] (per-sample
    sigma) the result is D_main and the guides are not evaluated when no sample is inside.
    rescale: phi of Lin et al. 2024 ("Common diffusion noise schedules ...", eq. 15-16), applied to the
    implied noise eps = (x - D) / sigma: its per-sample std is pulled back towards the main model's.
    """

    def __init__(
        self,
        main: Callable,
        guides: Sequence[tuple[Callable, float]] = (),
        *,
        interval: Interval = None,
        rescale: float = 0.0,
        classifier: Callable | None = None,
        classifier_scale: float = 0.0,
    ):
        super().__init__()
        self.main = main
        self.guides = nn.ModuleList(g if isinstance(g, nn.Module) else _Wrap(g) for g, _ in guides)
        self.weights = [check_weight(w) for _, w in guides]
        self.interval = check_interval(interval)
        if not 0 <= rescale <= 1:
            raise ConfigError(f"guidance rescale must be in [0, 1], got {rescale}")
        self.rescale = float(rescale)
        self.classifier = classifier
        self.classifier_scale = check_weight(classifier_scale, "classifier guidance scale")

    def active(self, sigma: torch.Tensor) -> torch.Tensor:
        """[N] bool: which samples' noise levels lie in the guidance interval."""
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.interval
        return (sigma >= lo) & (sigma <= hi)

    def forward(self, x, sigma, cond=None):
        sigma = batch_sigma(sigma, x)  # [N]
        main = self.main(x, sigma, cond)
        mask = self.active(sigma)
        if not bool(mask.any()):
            return main
        if len(self.guides) == 1 and self.weights[0] != 1:
            guide = self.guides[0](x, sigma, cond)
            out = guide + self.weights[0] * (main - guide)
        else:
            out = main
            for g, w in zip(self.guides, self.weights):
                if w != 1:
                    out = out + (w - 1) * (main - g(x, sigma, cond))
        if self.rescale > 0 and self.guides:
            out = _rescale(out, main, x, sigma, self.rescale)
        if self.classifier is not None and self.classifier_scale > 0:
            s2 = append_dims(sigma, x.ndim) ** 2
            out = out + self.classifier_scale * s2 * classifier_gradient(self.classifier, x, sigma, cond)
        if bool(mask.all()):
            return out
        return torch.where(append_dims(mask, x.ndim), out, main)


class _Wrap(nn.Module):
    """Holds a plain callable denoiser inside an nn.ModuleList."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x, sigma, cond=None):
        return self.fn(x, sigma, cond)


def _rescale(out, main, x, sigma, phi: float):
    """Lin et al. 2024 CFG rescale in eps space: eps <- phi eps std(eps_main)/std(eps) + (1 - phi) eps."""
    s = append_dims(sigma, x.ndim).clamp(min=1e-12)
    eps, eps_main = (x - out) / s, (x - main) / s
    dims = tuple(range(1, x.ndim))
    ratio = eps_main.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True).clamp(min=1e-12)
    eps = phi * eps * ratio + (1 - phi) * eps
    return x - s * eps


def classifier_gradient(classifier: Callable, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
    """grad_x log p(y | x, sigma) for labels y = cond; zero for samples with no label or the null label.

    classifier(x, sigma) -> logits [N, num_classes]. Runs with gradients enabled even inside the
    samplers' no_grad, on a detached copy of x.
    """
    if cond is None:
        raise ConfigError(
            "classifier guidance needs class labels (cond); got None. Pass a class, e.g. --class 0"
        )
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)  # x's dtype: float64 exact classifiers stay exact
        logits = classifier(xg, sigma)
        labels = torch.as_tensor(cond, device=x.device).long().reshape(-1).expand(x.shape[0])
        valid = (labels >= 0) & (labels < logits.shape[1])
        logp = torch.log_softmax(logits.float(), dim=1)
        picked = logp.gather(1, labels.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
        (grad,) = torch.autograd.grad((picked * valid).sum(), xg)
    return grad.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# the named guidance methods: one line each on top of Guided


def guidance(main: Callable, guide: Callable, w: float, *, interval: Interval = None, rescale: float = 0.0):
    """guide + w (main - guide): the one guidance combinator (w = 1 is no guidance)."""
    return Guided(main, [(guide, w)], interval=interval, rescale=rescale)


def classifier_free_guidance(
    denoiser: Callable, w: float, num_classes: int, *, interval: Interval = None, rescale: float = 0.0
):
    """Ho & Salimans 2022 with our w: D(null) + w (D(c) - D(null)); their w' = w - 1."""
    if num_classes < 1:
        raise ConfigError("classifier-free guidance needs a class-conditional model (num_classes >= 1)")
    return guidance(denoiser, NullConditioned(denoiser, num_classes), w, interval=interval, rescale=rescale)


def autoguidance(
    main: Callable, amateur: Callable, w: float, *, interval: Interval = None, rescale: float = 0.0
):
    """Karras et al. 2024: guide a model by a bad version of itself, D0 + w (D1 - D0), same condition."""
    return guidance(main, amateur, w, interval=interval, rescale=rescale)


def cfg_and_autoguidance(
    main: Callable,
    amateur: Callable,
    w_auto: float,
    w_cfg: float,
    num_classes: int,
    *,
    interval: Interval = None,
    rescale: float = 0.0,
):
    """Two guides at once: D1 + (w_auto - 1)(D1 - D0) + (w_cfg - 1)(D1 - D1(null))."""
    guides = [(amateur, w_auto), (NullConditioned(main, num_classes), w_cfg)]
    return Guided(main, guides, interval=interval, rescale=rescale)


def classifier_guidance(denoiser: Callable, classifier: Callable, scale: float, *, interval: Interval = None):
    """Dhariwal & Nichol 2021 in denoiser form: D + scale * sigma^2 * grad_x log p(y | x, sigma).

    With an exact classifier and scale 1 an unconditional exact denoiser becomes the exact conditional
    one (Bayes + Tweedie); scale s matches CFG at w = s for exact models.
    """
    return Guided(denoiser, [], interval=interval, classifier=classifier, classifier_scale=scale)


def convert_weight(value: float, convention: str) -> float:
    """Our w from another convention's number: 'ours', 'diffusers' (same) or 'ho-salimans' (w' + 1)."""
    table = {"ours": 0.0, "diffusers": 0.0, "ho-salimans": 1.0}

    return float(value) + lookup("guidance convention", convention, table)
