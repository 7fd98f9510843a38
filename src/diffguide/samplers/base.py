"""What every sampler shares: one denoiser call, the ODE's derivative, and the step callback."""

from __future__ import annotations

from diffguide.denoiser import append_dims


def _denoise(denoiser, x, sigma, cond):
    return denoiser(x, sigma.to(x.dtype).expand(x.shape[0]), cond)


def _d(x, denoised, sigma):
    """dx/dsigma of the probability-flow ODE in scale-free coordinates (EDM eq. 3): (x - D) / sigma."""
    return (x - denoised) / append_dims(sigma.to(x.dtype), x.ndim)


def _report(callback, i, x, sigma, sigma_next, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
