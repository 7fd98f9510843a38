"""The two sides of the diffusers parity tests: diffusers' pipeline loop and our sampler, on one exact eps
model (a Gaussian mixture's exact denoiser in the scheduler's VP coordinates). Callers skip without diffusers.
"""

from __future__ import annotations

import torch

from diffguide.adapters.diffusers import (
    EpsModelFromDenoiser,
    diffusers_denoiser,
    process_from_scheduler_config,
)
from diffguide.mixtures import eight_gaussians

N = 256  # points per run


def models(scheduler):
    """(exact eps model in the scheduler's VP coordinates, our denoiser wrapping it through the adapter)."""
    config = dict(scheduler.config)
    eps_model = EpsModelFromDenoiser(
        eight_gaussians(radius=2.0, std=0.3), process_from_scheduler_config(config)
    )
    return eps_model, diffusers_denoiser(eps_model, config)


def diffusers_loop(scheduler, eps_model, x, generator=None, **step_kwargs):
    """The standard diffusers pipeline loop."""
    if generator is not None:
        step_kwargs["generator"] = generator
    for t in scheduler.timesteps:
        eps = eps_model(scheduler.scale_model_input(x, t), t, return_dict=False)[0]
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


def run_both(scheduler, sampler, sigmas, *, vp: bool, seed: int | None = None, **step_kwargs):
    """Final samples (diffusers, ours) from the same start; vp: diffusers' x lives in VP coordinates."""
    eps_model, denoiser = models(scheduler)
    z = torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = sigmas.to(torch.float64)
    if vp:  # diffusers starts from x_T = z; in scale-free coordinates that is z * sqrt(1 + sigma_max^2)
        x_theirs, x_ours = z, z * (1 + sigmas[0] ** 2).sqrt()
    else:  # Euler/Heun already work in scale-free coordinates, starting at z * init_noise_sigma
        x_theirs = z * float(scheduler.init_noise_sigma)
        x_ours = x_theirs.clone()
    g_theirs = None if seed is None else torch.Generator().manual_seed(seed)
    g_ours = None if seed is None else torch.Generator().manual_seed(seed)
    theirs = diffusers_loop(scheduler, eps_model, x_theirs, g_theirs, **step_kwargs)
    ours = sampler(denoiser, x_ours, sigmas, generator=g_ours)
    assert torch.isfinite(ours).all()
    return theirs.to(torch.float64), ours
