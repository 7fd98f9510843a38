"""The one central type: a denoiser D(x, sigma, cond) -> x0_hat, and the wrappers that make one.

Every sampler, guidance combinator, metric and plot sees only denoisers. `x` is always in the
scale-free coordinates of Karras et al. 2022 (EDM, eq. 4): x = x0 + sigma * eps. A network trained
under a scaled process (DDPM, VP-SDE: x_t = s(t) * (x0 + sigma * eps)) is wrapped once so that it
accepts these coordinates; after that any sampler can drive it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from diffguide.errors import ConfigError, lookup


@runtime_checkable
class Denoiser(Protocol):
    """D(x, sigma, cond=None) -> x0_hat. x: [N, ...]; sigma: scalar or [N]; result has x's shape."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor: ...


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a [N] tensor broadcasts against an [N, ...] tensor of rank ndim."""
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"tensor of rank {v.ndim} has more dims than the target rank {ndim}")
    return v[(...,) + (None,) * missing]


def batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a [N] tensor on x's device and dtype (accepts a float, a 0-d or a [N] tensor)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma


class FunctionDenoiser(nn.Module):
    """Wrap a plain function f(x, sigma[N], cond) -> x0_hat as a denoiser module."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x, sigma, cond=None):
        return self.fn(x, batch_sigma(sigma, x), cond)


class EDMPrecond(nn.Module):
    """Karras et al. 2022 (EDM) preconditioning, Table 1: D = c_skip x + c_out F(c_in x, c_noise)."""

    target = "edm"

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x, sigma, cond=None):
        sigma = batch_sigma(sigma, x)
        s = append_dims(sigma, x.ndim)
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.net(c_in * x, c_noise, cond)


def _x0_from_eps(x, s, out):
    return x - s * out


def _x0_from_x0(x, s, out):
    return out


def _x0_from_v(x, s, out):
    # v = (alpha eps - sigma_t x0) / sqrt(alpha^2 + sigma_t^2) with alpha = s(t), sigma_t = s(t) sigma
    # (Salimans & Ho 2022, normalised so it also holds for VE); solving for x0 in x = x0 + sigma eps:
    return (x - s * (1 + s**2).sqrt() * out) / (1 + s**2)


def _x0_from_score(x, s, out):
    # the net predicts std_t * score_t (Song et al. 2021 divide the network output by the marginal
    # std): in scale-free coordinates score = -eps / sigma, so out = -eps.
    return x + s * out


def _x0_from_velocity(x, s, out):
    # the flow-matching velocity v = eps - x0 (Liu et al. 2023; SD3), = dx_t/dt under the flow process.
    # There x0_hat = x_t - t v with x_t = x / (1 + sigma), t = sigma / (1 + sigma); in x = x0 + sigma eps:
    return (x - s * out) / (1 + s)


OUTPUT_TO_X0 = {
    "eps": _x0_from_eps,
    "x0": _x0_from_x0,
    "v": _x0_from_v,
    "score": _x0_from_score,
    "velocity": _x0_from_velocity,
}


class ProcessPrecond(nn.Module):
    """Wrap a network trained under a noise process with target eps, x0, v, score or velocity into a denoiser.

    The net sees the process's own coordinates x_t = s(t) x and its noise input c_noise(t); its output
    is converted to x0_hat. This is k-diffusion's DiscreteEpsDDPMDenoiser / VDenoiser idea, one class
    for every target instead of one class per prediction type.
    """

    def __init__(self, net: nn.Module, process, target: str = "eps"):
        super().__init__()
        self.net = net
        self.process = process
        self.target = target
        self._to_x0 = lookup("prediction target", target, OUTPUT_TO_X0)

    def forward(self, x, sigma, cond=None):
        sigma = batch_sigma(sigma, x)
        t = self.process.t_of_sigma(sigma)
        scale = append_dims(self.process.scale(t), x.ndim).to(x.dtype)
        out = self.net(scale * x, self.process.c_noise(t).to(x.dtype), cond)
        return self._to_x0(x, append_dims(sigma, x.ndim), out)


class ClipDenoised(nn.Module):
    """A denoiser whose x0_hat is clamped to the data range [low, high] (Ho et al. 2020's code clips x0 to
    [-1, 1]; diffusers' `clip_sample`).

    Why: an eps-predicting network gives x0_hat = x - sigma eps_hat, so its eps error is multiplied by
    sigma. At a DDPM's sigma_max (~157) the rare starts from the noise tail (|z| > 3.3) get x0_hat tens of
    data widths away; ancestral samplers forget this through fresh noise, but ODE samplers carry it to
    the end. low, high: numbers, or tensors broadcastable to one sample's shape (per-coordinate bounds).
    """

    def __init__(self, denoiser: Callable, low, high):
        super().__init__()
        self.denoiser = denoiser
        self.low, self.high = (
            torch.as_tensor(low, dtype=torch.float64),
            torch.as_tensor(high, dtype=torch.float64),
        )
        if not bool((self.low < self.high).all()):  # written so that NaN fails too
            raise ConfigError(f"clip range needs low < high, got low={low}, high={high}")

    def forward(self, x, sigma, cond=None):
        out = self.denoiser(x, sigma, cond)
        return out.clamp(self.low.to(out), self.high.to(out))


def score_from_denoiser(denoised: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
    """grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2 (Tweedie / EDM eq. 3)."""
    sigma = append_dims(batch_sigma(sigma, x), x.ndim)
    return (denoised - x) / sigma**2


def log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """log SNR = -2 log sigma in scale-free coordinates."""
    return -2 * torch.log(sigma)


__all__ = [
    "ClipDenoised",
    "Denoiser",
    "EDMPrecond",
    "FunctionDenoiser",
    "ProcessPrecond",
    "append_dims",
    "batch_sigma",
    "score_from_denoiser",
    "log_snr",
]
