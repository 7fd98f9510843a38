"""Denoising losses: objects that receive the denoiser and return a per-sample loss.

Every target's mean-squared error is a weighted x0-space error: with x = x0 + sigma eps and
x0_hat = D(x, sigma),
    eps-MSE   = ||x0_hat - x0||^2 / sigma^2
    x0-MSE    = ||x0_hat - x0||^2
    v-MSE     = ||x0_hat - x0||^2 (1 + sigma^2) / sigma^2
    velocity  = ||x0_hat - x0||^2 (1 + sigma)^2 / sigma^2   (flow matching: v = eps - x0)
    score     = eps-MSE (the net predicts std * score = -eps; Song et al.'s lambda = std^2 weighting)
    EDM       = ||x0_hat - x0||^2 (sigma^2 + sd^2) / (sigma sd)^2   (Karras et al. 2022, lambda(sigma))
so one code path serves all of them; `weighting` then chooses the loss weight per noise level:
"native" (the target's plain MSE, e.g. DDPM's L_simple for eps), "snr" (eps-MSE for any target),
"min-snr" (Hang et al. 2023: x0-weight min(SNR, gamma), SNR = 1/sigma^2) or "edm".

With `exact_target` the regression target is the exact denoiser E[x0 | x, cond] of the data's mixture
instead of the sampled x0 (zero-variance targets, as NVlabs/edm2's toy trains): the same minimiser,
and the expected loss drops by exactly the weighted posterior variance E[w ||x0 - E[x0|x]||^2].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from diffguide.denoiser import append_dims
from diffguide.errors import ConfigError, lookup

Target = Literal["edm", "eps", "x0", "v", "score", "velocity"]  # the keys of TARGET_WEIGHT
Weighting = Literal["native", "snr", "min-snr", "edm"]  # the keys of WEIGHTINGS
NoiseSampling = Literal["log-normal", "uniform-t", "logit-normal"]  # the keys of NOISE_SAMPLING


@dataclass
class LossConfig:
    """Training target and how noise levels are drawn and weighted."""

    target: Target = "edm"
    weighting: Weighting = "native"
    min_snr_gamma: float = 5.0
    noise_sampling: NoiseSampling = "log-normal"
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    exact_target: bool = False  # regress on the data mixture's exact E[x0 | x] (train passes it in)


# prediction target -> its plain MSE as a weight on the x0-space error, w(sigma, sigma_data)
TARGET_WEIGHT = {
    "eps": lambda s, sd: 1 / s**2,
    "score": lambda s, sd: 1 / s**2,
    "x0": lambda s, sd: torch.ones_like(s),
    "v": lambda s, sd: (1 + s**2) / s**2,
    "edm": lambda s, sd: (s**2 + sd**2) / (s * sd) ** 2,
    # flow velocity eps - x0: its error is the x0 error over t = sigma / (1 + sigma)
    "velocity": lambda s, sd: (1 + s) ** 2 / s**2,
}

# loss weighting -> w(sigma, cfg), the weight on the x0-space squared error
WEIGHTINGS: dict[str, Callable[[torch.Tensor, LossConfig], torch.Tensor]] = {
    "native": lambda s, cfg: TARGET_WEIGHT[cfg.target](s, cfg.sigma_data),
    "snr": lambda s, cfg: 1 / s**2,
    "min-snr": lambda s, cfg: (1 / s**2).clamp(max=cfg.min_snr_gamma),
    "edm": lambda s, cfg: TARGET_WEIGHT["edm"](s, cfg.sigma_data),
}


def _log_normal_sigmas(n: int, generator, cfg: LossConfig, process) -> torch.Tensor:
    """EDM's ln sigma ~ N(p_mean, p_std^2)."""
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    return (cfg.p_mean + cfg.p_std * z).exp()


def _uniform_t_sigmas(n: int, generator, cfg: LossConfig, process) -> torch.Tensor:
    """sigma(t) at the process's uniform t (DDPM's uniform timesteps)."""
    return process.sigma(process.sample_t(n, generator)).to(torch.float64)


def _logit_normal_sigmas(n: int, generator, cfg: LossConfig, process) -> torch.Tensor:
    """SD3's logit-normal (Esser et al. 2024, eq. 19): u = sigmoid(p_mean + p_std z), t = the process's t at u."""
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    return process.sigma(process.t_from_unit(torch.sigmoid(cfg.p_mean + cfg.p_std * z))).to(torch.float64)


# noise sampling -> sigmas(n, generator, cfg, process), the training noise-level distribution
NOISE_SAMPLING: dict[str, Callable[..., torch.Tensor]] = {
    "log-normal": _log_normal_sigmas,
    "uniform-t": _uniform_t_sigmas,
    "logit-normal": _logit_normal_sigmas,
}


class DenoisingLoss:
    """loss(denoiser, x0, cond, generator) -> per-sample weighted MSE [N]."""

    def __init__(self, cfg: LossConfig, process, exact: Callable | None = None):
        lookup("prediction target", cfg.target, TARGET_WEIGHT)
        self._weight = lookup("loss weighting", cfg.weighting, WEIGHTINGS)
        self._sample_sigma = lookup("noise sampling", cfg.noise_sampling, NOISE_SAMPLING)
        if cfg.min_snr_gamma <= 0:
            raise ConfigError(f"min_snr_gamma must be > 0, got {cfg.min_snr_gamma}")
        self.cfg, self.process = cfg, process
        self.exact = exact  # the exact denoiser E[x0 | x, cond] to regress on (exact_target), or None

    def sample_sigma(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Training noise levels [n] (float64): log-normal (EDM) or the process's uniform t."""
        return self._sample_sigma(n, generator, self.cfg, self.process)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample weight on the x0-space squared error."""
        return self._weight(sigma, self.cfg)

    def draw_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """(sigma [N] float64, eps like x0), drawn on the CPU so a run is the same on any device."""
        sigma = self.sample_sigma(x0.shape[0], generator)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        return sigma, eps

    def __call__(
        self, denoiser, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None, noise=None
    ):
        sigma, eps = self.draw_noise(x0, generator) if noise is None else noise
        sigma, eps = sigma.to(x0.device), eps.to(x0.device)
        x = x0 + append_dims(sigma.to(x0.dtype), x0.ndim) * eps
        x0_hat = denoiser(x, sigma.to(x0.dtype), cond)
        target = x0 if self.exact is None else self.exact_target(x, sigma, cond)
        err = (x0_hat.float() - target.float()).reshape(x0.shape[0], -1).pow(2).mean(1)
        return self.weight(sigma).to(err.dtype) * err

    @torch.no_grad()
    def exact_target(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        """E[x0 | x, cond] from the exact denoiser (float64 inside, outside autocast), in x's dtype."""
        with torch.autocast(x.device.type, enabled=False):
            return self.exact(x, sigma, cond).to(x.dtype)
