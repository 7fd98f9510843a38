"""Per-sample noise: sample i's noise and result depend on (seed, i) only, never on its batch."""

from __future__ import annotations

import pytest
import torch

from diffguide.errors import ConfigError
from diffguide.grids import karras_sigmas
from diffguide.mixtures import eight_gaussians
from diffguide.noise import CHUNK, PerSampleNoise, noise_like, sample_seeds
from diffguide.samplers import SAMPLERS
from diffguide.samplers.generation import generate

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


SAMPLER_CASES = {**{name: (name, {}) for name in SAMPLERS}, "heun-churn": ("heun", {"s_churn": 20.0})}


@pytest.mark.parametrize("case", list(SAMPLER_CASES))
def test_generate_is_batch_size_invariant(case, tree):
    """generate() with one seed gives bit-identical samples at batch sizes 1, 7 and 64, with the
    library's exact denoiser (the tree mixture: full covariances), for every sampler."""
    sampler, options = SAMPLER_CASES[case]
    sigmas = karras_sigmas(12)

    def run(batch_size: int, seed: int = 3) -> torch.Tensor:
        return generate(
            tree,
            20,
            (2,),
            sigmas=sigmas,
            sampler=sampler,
            seed=seed,
            batch_size=batch_size,
            dtype=F64,
            sampler_kwargs=options,
        )

    runs = [run(b) for b in (1, 7, 64)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], run(64, seed=4))  # a different seed is a different draw
    if case == "heun-churn":  # churn really injects noise: without it Heun differs
        plain = generate(tree, 20, (2,), sigmas=sigmas, sampler="heun", seed=3, dtype=F64)
        assert not torch.equal(runs[0], plain)


def test_generate_rejects_bad_counts():
    with pytest.raises(ConfigError, match="-1"):
        generate(eight_gaussians(), -1, (2,), sigmas=karras_sigmas(4))
    with pytest.raises(ConfigError, match="did you mean 'heun'"):
        generate(eight_gaussians(), 3, (2,), sigmas=karras_sigmas(4), sampler="huen")
