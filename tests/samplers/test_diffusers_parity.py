"""Parity with diffusers: our samplers reproduce diffusers' scheduler loops on the same eps model.

The eps model is exact: the noise prediction of a Gaussian mixture's exact denoiser in the VP
coordinates of the scheduler's own alpha_bar table (`EpsModelFromDenoiser`). The diffusers side runs
the usual pipeline loop (scale_model_input, model, step); our side wraps the same eps model with the
adapter (`diffusers_denoiser`, which is what `load_diffusers` returns for a real UNet) and runs our
sampler on the matching sigma grid, from the same starting noise and, for the stochastic samplers,
the same torch.Generator (diffusers' step() draws its noise with torch.randn(shape, generator=g),
the same call our samplers make, at the same steps). Both sides: diffusers_loops.py.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is needed for the parity tests")

from diffguide import samplers  # noqa: E402
from diffguide.adapters.diffusers import process_from_scheduler_config  # noqa: E402
from diffguide.grids import karras_sigmas, spaced_sigmas, spaced_timesteps  # noqa: E402
from tests.samplers.diffusers_loops import N, diffusers_loop, models, run_both  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def float64(scheduler):
    """Move a DDPM/DDIM scheduler's alpha tables to float64 (same values: float32 promoted exactly)."""
    for name in ("betas", "alphas", "alphas_cumprod", "one", "final_alpha_cumprod"):
        value = getattr(scheduler, name, None)
        if torch.is_tensor(value):
            setattr(scheduler, name, value.to(torch.float64))
    return scheduler


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 3, 7, 50, 1000])
def test_spaced_timesteps_match_diffusers(spacing, n):
    scheduler = diffusers.DDPMScheduler(
        timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0
    )
    scheduler.set_timesteps(n)
    ours = spaced_timesteps(n, 1000, spacing, scheduler.config.steps_offset)
    assert ours.tolist() == scheduler.timesteps.tolist()


@pytest.mark.parametrize("n", [1000, 50])
def test_ddpm_ancestral_matches_ddpm_scheduler(n):
    scheduler = diffusers.DDPMScheduler(
        clip_sample=False, variance_type="fixed_small", timestep_spacing="leading"
    )
    float64(scheduler).set_timesteps(n)
    sigmas = spaced_sigmas(n, process_from_scheduler_config(dict(scheduler.config)), "leading")
    theirs, ours = run_both(scheduler, samplers.sample_ddpm, sigmas, vp=True, seed=5)
    assert (theirs - ours).abs().max() < 1e-9  # measured 1.5e-12 (n=1000)


def test_ddpm_ancestral_float32_scheduler():
    """diffusers' default float32 alpha tables: the difference is float32 rounding in its coefficients."""
    scheduler = diffusers.DDPMScheduler(clip_sample=False, variance_type="fixed_small")
    scheduler.set_timesteps(50)
    sigmas = spaced_sigmas(50, process_from_scheduler_config(dict(scheduler.config)), "leading")
    theirs, ours = run_both(scheduler, samplers.sample_ddpm, sigmas, vp=True, seed=5)
    assert (theirs - ours).abs().max() < 1e-4  # measured 1.2e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_ddim_scheduler(spacing, eta):
    # diffusers' DDIM steps from t to t - T // n, so only "leading" and "trailing" spacings visit the
    # timesteps they list ("linspace" does not; see docs/interop.md)
    scheduler = diffusers.DDIMScheduler(
        clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=0
    )
    float64(scheduler).set_timesteps(50)
    sigmas = spaced_sigmas(50, process_from_scheduler_config(dict(scheduler.config)), spacing)

    def sampler(denoiser, x, sigmas, generator=None):
        return samplers.sample_ddim(denoiser, x, sigmas, generator=generator, eta=eta)

    theirs, ours = run_both(scheduler, sampler, sigmas, vp=True, seed=7 if eta > 0 else None, eta=eta)
    assert (theirs - ours).abs().max() < 1e-9  # measured < 5e-14


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing", "karras-custom"])
def test_euler_matches_euler_discrete(spacing):
    if (
        spacing == "karras-custom"
    ):  # custom sigmas: diffusers maps them to t by log-sigma interpolation, as we do
        scheduler = diffusers.EulerDiscreteScheduler()
        scheduler.set_timesteps(sigmas=karras_sigmas(20, 0.02, 80.0).numpy())
    else:
        scheduler = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing)
        scheduler.set_timesteps(20)
    theirs, ours = run_both(scheduler, samplers.sample_euler, scheduler.sigmas, vp=False)
    # diffusers' Euler step casts the sample to float32: float32 rounding, |x| <= 3
    assert (theirs - ours).abs().max() < 2e-5  # measured 1e-6 (leading) .. 6e-6 (linspace)


@pytest.mark.parametrize("variant", ["leading", "linspace", "karras"])
def test_heun_matches_heun_discrete(variant):
    if variant == "karras":
        scheduler = diffusers.HeunDiscreteScheduler(use_karras_sigmas=True)
    else:
        scheduler = diffusers.HeunDiscreteScheduler(timestep_spacing=variant)
    scheduler.set_timesteps(10)
    # diffusers repeats each intermediate sigma (one entry per model evaluation); ours lists each once
    sigmas = torch.unique_consecutive(scheduler.sigmas)
    assert len(scheduler.timesteps) == 2 * (len(sigmas) - 1) - 1  # same number of evaluations
    theirs, ours = run_both(scheduler, samplers.sample_heun, sigmas, vp=False)
    assert (theirs - ours).abs().max() < 1e-6  # measured 3e-8


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_dpmpp_2m_matches_dpm_solver_multistep(spacing):
    # dpmsolver++, order 2, midpoint, final sigma 0: the final step is first order, x = D, as ours
    scheduler = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)
    scheduler.set_timesteps(20)
    theirs, ours = run_both(scheduler, samplers.sample_dpmpp_2m, scheduler.sigmas, vp=True)
    # the DPM-Solver step casts the sample to float32
    assert (theirs - ours).abs().max() < 2e-5  # measured 1.3e-6


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_dpmpp_2m_sde_matches_sde_dpm_solver_multistep(spacing, steps):
    # sde-dpmsolver++, order 2, midpoint; its step draws float32 noise from the generator, so ours runs
    # in float32 from the same generator (same draws at the same steps) and the difference is rounding
    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++", timestep_spacing=spacing
    )
    scheduler.set_timesteps(steps)
    eps_model, denoiser = models(scheduler)
    z = torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = scheduler.sigmas.to(torch.float64)
    theirs = diffusers_loop(scheduler, eps_model, z, torch.Generator().manual_seed(5))
    x = (z * (1 + sigmas[0] ** 2).sqrt()).float()
    ours = samplers.sample_dpmpp_2m_sde(denoiser, x, sigmas, generator=torch.Generator().manual_seed(5))
    assert (theirs.double() - ours.double()).abs().max() < 5e-5  # measured 2.3e-6 (5 steps) .. 7.2e-6 (20)
