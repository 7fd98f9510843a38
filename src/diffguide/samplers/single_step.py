"""Samplers as plain functions of (denoiser, x, sigmas, cond, generator, callback).

`x` is the starting point at sigmas[0] (noise times sigmas[0]); `sigmas` is descending and ends in 0.
Every sampler works in the scale-free coordinates x = x0 + sigma eps, so it runs any denoiser
whatever process it was trained under. The callback gets {"i", "x", "sigma", "sigma_next", "denoised"}
after each step. A sampler is one function plus one `SamplerSpec` line in registry.SAMPLER_SPECS.
"""

from __future__ import annotations

import math

import torch

from diffguide.denoiser import append_dims
from diffguide.errors import ConfigError, lookup
from diffguide.noise import noise_like
from diffguide.samplers.base import _d, _denoise, _report, check_option, check_sigmas


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0):
    """Split a step into a deterministic part down to sigma_down and fresh noise of std sigma_up.

    sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2: DDIM's sigma_t (Song et al.
    2021, eq. 16) written in scale-free coordinates; eta = 1 is the DDPM posterior variance.
    """
    if float(sigma_next) == 0:
        return sigma_next, sigma_next
    up = min(float(sigma_next), eta * math.sqrt(float(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)))
    down = math.sqrt(float(sigma_next**2) - up**2)
    return sigma.new_tensor(down), sigma.new_tensor(up)


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler on the probability-flow ODE (EDM Algorithm 1 without the correction). Equals DDIM (eta=0)."""
    sigmas = check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        x = x + _d(x, denoised, sigma) * (sigma_next - sigma).to(x.dtype)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_heun(
    denoiser,
    x,
    sigmas,
    *,
    cond=None,
    generator=None,
    callback=None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
):
    """Karras et al. 2022, Algorithm 2: Heun's 2nd-order method with optional stochastic churn."""
    sigmas = check_sigmas(sigmas)
    check_option("heun", "s_churn", s_churn)
    check_option("heun", "s_noise", s_noise)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= float(sigma) <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            eps = noise_like(x, generator) * s_noise
            x = x + eps * (sigma_hat**2 - sigma**2).sqrt().to(x.dtype)
        denoised = _denoise(denoiser, x, sigma_hat, cond)
        d = _d(x, denoised, sigma_hat)
        dt = (sigma_next - sigma_hat).to(x.dtype)
        x_next = x + d * dt
        if float(sigma_next) > 0:
            denoised_next = _denoise(denoiser, x_next, sigma_next, cond)
            x_next = x + (d + _d(x_next, denoised_next, sigma_next)) / 2 * dt
        x = x_next
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, eta: float = 0.0):
    """DDIM (Song, Meng & Ermon 2021) with stochasticity eta; eta=0 is deterministic, eta=1 is DDPM."""
    sigmas = check_sigmas(sigmas)
    check_option("ddim", "eta", eta)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        # x_next = x0_hat + sigma_down * eps_hat + sigma_up * z, eps_hat = (x - x0_hat) / sigma
        x = denoised + _d(x, denoised, sigma) * sigma_down.to(x.dtype)
        if float(sigma_up) > 0:
            x = x + noise_like(x, generator) * sigma_up.to(x.dtype)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_ddpm(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with the posterior variance beta_tilde.

    On consecutive DDPM timesteps this is exactly x_{t-1} = mu_tilde(x_t, x0_hat) + sqrt(beta_tilde) z;
    on a coarser grid it is the same posterior between the grid's noise levels.
    """
    return sample_ddim(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, eta=1.0)


@torch.no_grad()
def sample_euler_maruyama(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler-Maruyama on the reverse SDE dx = -d[sigma^2] score + sqrt(d[sigma^2]) dw (Song et al. 2021).

    With the S-curve experiment's VE SDE dx = sigma^t dw, g(t)^2 dt = d[sigma(t)^2]: this is its
    x + g^2 score dt + g sqrt(dt) z, using the exact sigma^2 increment over each step.
    """
    sigmas = check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        dvar = (sigma**2 - sigma_next**2).to(x.dtype)
        score = (denoised - x) / append_dims(sigma.to(x.dtype), x.ndim) ** 2
        x = x + dvar * score
        if float(sigma_next) > 0:
            x = x + noise_like(x, generator) * dvar.sqrt()
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


@torch.no_grad()
def sample_pc(
    denoiser,
    x,
    sigmas,
    *,
    cond=None,
    generator=None,
    callback=None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    step_rule: str = "sigma",
):
    """Predictor-corrector (Song et al. 2021, Algorithms 2-3): reverse-SDE predictor, Langevin corrector.

    step_rule "song" is Song et al.'s step 2 (snr ||z|| / ||score||)^2, here per sample (not per batch)
    so a sample does not depend on its batch. In high dimension ||z|| ~ sqrt(d) and ||score|| ~
    sqrt(d) / sigma, so it tends to 2 (snr sigma)^2: rule "sigma" (the default) uses that limit, which
    stays stable in low dimension where a point at a mode has a near-zero score and Song's step explodes.
    """
    sigmas = check_sigmas(sigmas)
    check_option("pc", "snr", snr)
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ConfigError(
            f"option corrector_steps of sampler 'pc' must be an integer >= 0, got {corrector_steps!r}"
        )
    lookup("corrector step rule", step_rule, {"song": 0, "sigma": 0})
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        dvar = (sigma**2 - sigma_next**2).to(x.dtype)
        x = x + dvar * (denoised - x) / append_dims(sigma.to(x.dtype), x.ndim) ** 2
        if float(sigma_next) > 0:
            x = x + noise_like(x, generator) * dvar.sqrt()
            for _ in range(corrector_steps):
                d_next = _denoise(denoiser, x, sigma_next, cond)
                score = (d_next - x) / append_dims(sigma_next.to(x.dtype), x.ndim) ** 2
                z = noise_like(x, generator)
                if step_rule == "song":
                    ratio = _per_sample_norm(z) / _per_sample_norm(score).clamp(min=1e-12)
                    step = append_dims(2 * (snr * ratio) ** 2, x.ndim)
                else:
                    step = 2 * (snr * sigma_next.to(x.dtype)) ** 2
                x = x + step * score + (2 * step).sqrt() * z
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_dpmpp_2m(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in scale-free coordinates, lambda = -log sigma.

    The 2M SDE step below with eta = 0: x' = (sigma'/sigma) x + (1 - e^-h) (D + (D - D_prev) h / (2 h_prev)).
    """
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, cond=cond, callback=callback, eta=0.0)


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser,
    x,
    sigmas,
    *,
    cond=None,
    generator=None,
    callback=None,
    eta: float = 1.0,
    s_noise: float = 1.0,
):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", SDE form; midpoint), lambda = -log sigma.

    Each step solves the reverse SDE's linear part exactly over h, with eta h of its noise:
    x' = (sigma'/sigma) e^(-eta h) x + (1 - e^(-(1 + eta) h)) (D + D1 / 2) + sigma' sqrt(1 - e^(-2 eta h)) z,
    D1 = (D - D_prev) h / h_prev. eta = 1 is diffusers' "sde-dpmsolver++" and k-diffusion's default;
    eta = 0 is DPM-Solver++(2M) exactly.
    """
    sigmas = check_sigmas(sigmas)
    check_option("dpmpp-2m-sde", "eta", eta)
    check_option("dpmpp-2m-sde", "s_noise", s_noise)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        if float(sigma_next) == 0:
            x = denoised
        else:
            h = float(sigma.log() - sigma_next.log())
            eta_h = eta * h
            weight = -math.expm1(-h - eta_h)  # 1 - e^(-(1 + eta) h)
            x = (float(sigma_next / sigma) * math.exp(-eta_h)) * x + weight * denoised
            if old_denoised is not None:
                x = x + (0.5 * weight * h / h_last) * (denoised - old_denoised)
            if eta > 0:
                x = x + noise_like(x, generator) * (
                    float(sigma_next) * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
                )
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x
