"""The sampler contract, checked for every sampler in the registry (samplers/registry.py).

Each registered sampler, with its default options (and pc with other corrector counts): the callback
fires once per step with exactly the documented keys; the denoiser is called as often as the
sampler's spec says, step by step; deterministic samplers never draw noise, stochastic ones draw only
from the generator they are given; each row's result is that row sampled alone (per-sample noise);
the input's dtype is kept; the condition reaches the denoiser unchanged. The denoiser is the exact
one of a Gaussian mixture, so every run is cheap and well defined.
"""

from __future__ import annotations

import pytest
import torch

from diffguide.grids import karras_sigmas
from diffguide.mixtures import eight_gaussians
from diffguide.noise import PerSampleNoise
from diffguide.samplers.registry import SAMPLER_SPECS, evals_for_steps, steps_for_evals

F64 = torch.float64
STEPS = 6
SIGMAS = karras_sigmas(STEPS)
MIXTURE = eight_gaussians()
CALLBACK_KEYS = {"i", "x", "sigma", "sigma_next", "denoised"}

# (sampler, options): every registered sampler as it is, plus options that change the evaluations
CASES = {name: (name, {}) for name in SAMPLER_SPECS}
CASES["pc-corrector-0"] = ("pc", {"corrector_steps": 0})
CASES["pc-corrector-3"] = ("pc", {"corrector_steps": 3})


class Recorder:
    """Wraps a denoiser: counts its calls and keeps the condition each call received."""

    def __init__(self, inner):
        self.inner, self.calls, self.conds = inner, 0, []

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        self.conds.append(cond)
        return self.inner(x, sigma, None)


class CountingNoise(PerSampleNoise):
    """Per-sample noise that counts its draws."""

    draws = 0

    def randn(self, shape, dtype=torch.float32):
        self.draws += 1
        return super().randn(shape, dtype)


def start(seed: int, n: int, first: int = 0, dtype=F64) -> tuple[torch.Tensor, CountingNoise]:
    """Samples first..first+n-1 of a seed: x at sigma_max from each one's own stream, as generate() does."""
    noise = CountingNoise.from_seed(seed, n, start=first)
    x = noise.randn((2,), dtype) * SIGMAS[0].to(dtype)
    noise.draws = 0
    return x, noise


def run(name: str, denoiser, x, noise, **kwargs) -> torch.Tensor:
    return SAMPLER_SPECS[name].function(denoiser, x, SIGMAS, generator=noise, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_callback_and_evaluations_per_step(case):
    """One callback per step with exactly the documented keys, sigma and sigma_next from the grid, the
    last x the result; between callbacks the denoiser ran evals_per_step(options) times (once on the
    last step, to sigma = 0), so evals_for_steps and steps_for_evals count what really happens."""
    name, options = CASES[case]
    spec = SAMPLER_SPECS[name]
    denoiser = Recorder(MIXTURE)
    seen, calls = [], []

    def callback(info):
        seen.append(info)
        calls.append(denoiser.calls)

    x, noise = start(0, 5)
    out = run(name, denoiser, x, noise, callback=callback, **options)
    assert all(set(info) == CALLBACK_KEYS for info in seen)
    assert [info["i"] for info in seen] == list(range(STEPS))
    assert all(float(info["sigma"]) == float(SIGMAS[i]) for i, info in enumerate(seen))
    assert all(float(info["sigma_next"]) == float(SIGMAS[i + 1]) for i, info in enumerate(seen))
    assert torch.equal(seen[-1]["x"], out)
    per_step = [b - a for a, b in zip([0, *calls], calls)]
    assert per_step == [spec.evals_per_step(options)] * (STEPS - 1) + [1], per_step
    assert denoiser.calls == evals_for_steps(name, STEPS, options)
    for budget in range(1, 30):  # the most steps that fit the budget
        k = steps_for_evals(name, budget, options)
        assert evals_for_steps(name, k, options) <= budget < evals_for_steps(name, k + 1, options)


@pytest.mark.parametrize("name", list(SAMPLER_SPECS))
def test_noise_comes_from_the_generator_of_stochastic_samplers_only(name):
    """Deterministic samplers draw nothing (neither from the generator nor the global RNG); stochastic
    ones draw from the generator alone: the same seed repeats the result, another changes every row."""
    x, noise = start(1, 8)
    rng = torch.get_rng_state()
    out = run(name, MIXTURE, x, noise)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG was used"
    if not SAMPLER_SPECS[name].stochastic:
        assert noise.draws == 0
        assert torch.equal(out, run(name, MIXTURE, x, None))
        return
    assert noise.draws > 0
    assert torch.equal(out, run(name, MIXTURE, x, start(1, 8)[1]))
    other = run(name, MIXTURE, x, start(2, 8)[1])
    assert bool((other != out).any(dim=1).all())


@pytest.mark.parametrize("name", list(SAMPLER_SPECS))
def test_each_row_is_that_row_alone(name):
    """Batch invariance: with per-sample noise, sample i of a batch equals sample i sampled by itself."""
    x, noise = start(3, 5)
    batch = run(name, MIXTURE, x, noise)
    for i in range(5):
        x_i, noise_i = start(3, 1, first=i)
        assert torch.equal(x_i[0], x[i])
        assert torch.equal(run(name, MIXTURE, x_i, noise_i)[0], batch[i]), i


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(SAMPLER_SPECS))
def test_dtype_is_kept(name, dtype):
    seen = []
    x, noise = start(4, 3, dtype=dtype)
    out = run(name, MIXTURE, x, noise, callback=seen.append)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(info["x"].dtype == dtype and info["denoised"].dtype == dtype for info in seen)


@pytest.mark.parametrize("name", list(SAMPLER_SPECS))
def test_cond_reaches_the_denoiser_unchanged(name):
    """Every denoiser call receives the very object passed as cond (labels, or a dict of attributes)."""
    for cond in (torch.tensor([2, 0, 1]), {"type": torch.tensor([1, 1, 0])}):
        denoiser = Recorder(MIXTURE)
        x, noise = start(5, 3)
        run(name, denoiser, x, noise, cond=cond)
        assert denoiser.calls > 0 and all(c is cond for c in denoiser.conds)
