"""Per-sample noise: sample i's noise and result depend on (seed, i) only, never on its batch."""

from __future__ import annotations

import pytest
import torch

from diffguide.denoiser import FunctionDenoiser
from diffguide.errors import ConfigError
from diffguide.grids import karras_sigmas
from diffguide.mixtures import eight_gaussians
from diffguide.noise import CHUNK, PerSampleNoise, noise_like, sample_seeds
from diffguide.sampling import generate

F64 = torch.float64


def draws(noise: PerSampleNoise, count: int, shape=(3,)) -> torch.Tensor:
    return torch.stack([noise.randn(shape, F64) for _ in range(count)], 1)  # [N, count, *shape]


def test_streams_do_not_depend_on_the_batch():
    """Samples 5..9 drawn on their own equal rows 5..9 of a batch of 20, over several refills of the
    per-generator chunk, and each row is what torch.Generator(seed_i) itself produces."""
    count = 2 * CHUNK + 3
    full = draws(PerSampleNoise.from_seed(42, 20), count)
    part = draws(PerSampleNoise.from_seed(42, 5, start=5), count)
    assert torch.equal(full[5:10], part)
    seeds = sample_seeds(42, 20)
    assert len(set(seeds)) == 20
    own = torch.randn((CHUNK, 3), generator=torch.Generator().manual_seed(seeds[7]), dtype=torch.float32)
    assert torch.equal(full[7, :CHUNK], own.to(F64))  # drawn in float32, then cast
    # distinct seeds give distinct, roughly standard normal streams
    assert not torch.equal(full[0], full[1])
    assert abs(float(full.mean())) < 0.1 and abs(float(full.std()) - 1) < 0.1


def test_randn_like_checks_the_batch():
    noise = PerSampleNoise.from_seed(0, 4)
    assert noise_like(torch.zeros(4, 2, dtype=F64), noise).dtype == F64
    with pytest.raises(ValueError, match="batch of 3 samples but 4"):
        noise.randn_like(torch.zeros(3, 2))


def isotropic_mixture_denoiser():
    """The exact denoiser of eight_gaussians() written with elementwise ops and per-row reductions only.

    The library's GaussianMixture uses matrix products whose kernels differ for one row and for many
    (results then differ in the last bit between batch size 1 and 7), which would hide what this test
    is about: whether each sample's noise depends on its batch. Rows here are computed independently,
    so any difference between batch sizes can only come from the noise streams or the sampler."""
    mixture = eight_gaussians()
    means, var0 = mixture.means, float(mixture.covs[0, 0, 0])  # [K, 2]; isotropic, equal variances

    def fn(x, sigma, cond):
        var = var0 + sigma[:, None] ** 2  # [N, 1]
        diff = x[:, None, :] - means[None]  # [N, K, 2]
        r = torch.softmax(-0.5 * (diff**2).sum(-1) / var, dim=1)  # equal weights and widths
        return ((means[None] + var0 / var[..., None] * diff) * r[..., None]).sum(1)

    return FunctionDenoiser(fn)


CASES = {
    "ddpm": {},
    "euler-maruyama": {},
    "pc": {},
    "heun-churn": {"s_churn": 20.0},
}


@pytest.mark.parametrize("case", list(CASES))
def test_generate_is_batch_size_invariant(case):
    """generate() with one seed gives bit-identical samples at batch sizes 1, 7 and 64."""
    mixture = isotropic_mixture_denoiser()
    torch.testing.assert_close(  # it is the exact denoiser
        mixture(torch.ones(3, 2, dtype=F64), 0.4), eight_gaussians()(torch.ones(3, 2, dtype=F64), 0.4)
    )
    sampler = "heun" if case == "heun-churn" else case
    sigmas = karras_sigmas(12)
    runs = [
        generate(
            mixture,
            20,
            (2,),
            sigmas=sigmas,
            sampler=sampler,
            seed=3,
            batch_size=b,
            dtype=F64,
            sampler_kwargs=CASES[case],
        )
        for b in (1, 7, 64)
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = generate(
        mixture, 20, (2,), sigmas=sigmas, sampler=sampler, seed=4, dtype=F64, sampler_kwargs=CASES[case]
    )
    assert not torch.equal(runs[0], other)  # a different seed is a different draw
    library = [  # the library's GaussianMixture: equal up to last-bit differences of its matrix products
        generate(
            eight_gaussians(),
            20,
            (2,),
            sigmas=sigmas,
            sampler=sampler,
            seed=3,
            batch_size=b,
            dtype=F64,
            sampler_kwargs=CASES[case],
        )
        for b in (1, 7)
    ]
    torch.testing.assert_close(library[0], library[1], rtol=1e-12, atol=1e-12)
    if case == "heun-churn":  # churn really injects noise: without it Heun differs
        plain = generate(mixture, 20, (2,), sigmas=sigmas, sampler="heun", seed=3, dtype=F64)
        assert not torch.equal(runs[0], plain)


def test_generate_rejects_bad_counts():
    with pytest.raises(ConfigError, match="-1"):
        generate(eight_gaussians(), -1, (2,), sigmas=karras_sigmas(4))
    with pytest.raises(ConfigError, match="did you mean 'heun'"):
        generate(eight_gaussians(), 3, (2,), sigmas=karras_sigmas(4), sampler="huen")
