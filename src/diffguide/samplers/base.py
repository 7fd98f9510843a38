"""What every sampler shares: the sigma-grid check, one denoiser call, the ODE's derivative, the callback."""

from __future__ import annotations

import math

import torch

from diffguide.denoiser import append_dims
from diffguide.errors import ConfigError


def check_sigmas(sigmas, *, to_zero: bool = False) -> torch.Tensor:
    """The sigma grid as a tensor, refused unless 1-D, >= 2 entries, finite, strictly decreasing, >= 0.

    Every sampler calls this once per call (one host sync, not one per step). to_zero: also require
    the last entry to be 0, as `generate` does: a grid ending above 0 stops at noisy samples (which
    a sampler called directly may want: one step between two noise levels, a grid ending at sigma_min).
    """
    if not torch.is_tensor(sigmas):
        try:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"sigmas must be a 1-D tensor of noise levels, got {sigmas!r}") from None
    fix = "build one with diffguide.grids.make_sigmas (descending, then a final 0)"
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ConfigError(
            f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}; {fix}"
        )
    if not sigmas.is_floating_point():
        sigmas = sigmas.to(torch.float64)
    values = sigmas.detach().cpu().tolist()  # one transfer; the checks below are on the host
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise ConfigError(f"sigmas must be finite, got sigmas[{bad}] = {values[bad]}; {fix}")
    up = next((i for i in range(len(values) - 1) if not values[i + 1] < values[i]), None)
    if up is not None:
        raise ConfigError(
            f"sigmas must be strictly decreasing, got sigmas[{up}] = {values[up]} then sigmas[{up + 1}] = "
            f"{values[up + 1]}; {fix}"
        )
    if values[-1] < 0:
        raise ConfigError(f"sigmas must be >= 0, got sigmas[{len(values) - 1}] = {values[-1]}; {fix}")
    if to_zero and values[-1] != 0:
        raise ConfigError(
            f"sigmas must end in 0 so that the last step lands on the data, got a last sigma of {values[-1]}; "
            "append a 0: torch.cat([sigmas, sigmas.new_zeros(1)])"
        )
    return sigmas


def check_option(sampler: str, name: str, value: float) -> None:
    """A sampler's numeric option (eta, s_noise, snr, ...) must be a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"option {name} of sampler {sampler!r} must be a finite number >= 0, got {value!r}")


def _denoise(denoiser, x, sigma, cond):
    return denoiser(x, sigma.to(x.dtype).expand(x.shape[0]), cond)


def _d(x, denoised, sigma):
    """dx/dsigma of the probability-flow ODE in scale-free coordinates (EDM eq. 3): (x - D) / sigma."""
    return (x - denoised) / append_dims(sigma.to(x.dtype), x.ndim)


def _report(callback, i, x, sigma, sigma_next, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
