"""Samplers as plain functions, their registry, and batched generation with per-sample noise.

Modules: `single_step` (Euler, Heun, DDIM, DDPM, Euler-Maruyama, predictor-corrector, DPM-Solver++ 2M),
`multistep` (DPM-Solver++ 3M, UniPC, iPNDM), `registry` (name -> spec: function, evaluations per
step, stochastic or not; options), `generation` (n samples in batches, sigma grids, a run's saved defaults), `inpaint`.
"""

from diffguide.samplers.generation import generate, labels_for, sample_run, sigma_grid
from diffguide.samplers.multistep import sample_dpmpp_3m, sample_ipndm, sample_unipc, sample_unipc_3
from diffguide.samplers.registry import (
    SAMPLER_SPECS,
    SAMPLERS,
    STOCHASTIC,
    SamplerSpec,
    evals_for_steps,
    get_sampler,
    get_sampler_spec,
    sampler_option_defaults,
    sampler_options,
    steps_for_evals,
)
from diffguide.samplers.single_step import (
    ancestral_step,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    sample_pc,
)

__all__ = [
    "SAMPLERS",
    "SAMPLER_SPECS",
    "STOCHASTIC",
    "SamplerSpec",
    "ancestral_step",
    "evals_for_steps",
    "generate",
    "get_sampler",
    "get_sampler_spec",
    "labels_for",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_ipndm",
    "sample_pc",
    "sample_run",
    "sample_unipc",
    "sample_unipc_3",
    "sampler_option_defaults",
    "sampler_options",
    "sigma_grid",
    "steps_for_evals",
]
