"""Inpainting keeps the known pixels exactly, with any sampler and with guidance; masks load as promised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffguide.denoiser import FunctionDenoiser, append_dims
from diffguide.errors import ConfigError
from diffguide.samplers.generation import generate, sigma_grid
from diffguide.samplers.inpaint import inpainting_sampler, load_mask, shape_mask

SHAPE = (3, 6, 6)
MEAN = torch.linspace(-0.8, 0.8, 3 * 36).reshape(SHAPE)


def gaussian_denoiser():
    """The exact denoiser of N(MEAN, 0.25 I): E[x0 | x] = (0.25 x + sigma^2 MEAN) / (0.25 + sigma^2)."""

    def d(x, sigma, cond):
        s2 = append_dims(sigma, x.ndim) ** 2
        shift = 0.0 if cond is None else 0.1 * append_dims(torch.as_tensor(cond).float(), x.ndim)
        return (0.25 * x + s2 * (MEAN + shift)) / (0.25 + s2)

    return FunctionDenoiser(d)


KNOWN = torch.rand(SHAPE) * 2 - 1


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddpm", "dpmpp-2m", "euler-maruyama"])
def test_known_pixels_are_kept_exactly(sampler):
    mask = shape_mask("left", SHAPE)
    sigmas = sigma_grid("karras", 8, sigma_min=0.02, sigma_max=20.0)
    x = generate(
        gaussian_denoiser(), 5, SHAPE, sigmas=sigmas, sampler=inpainting_sampler(sampler, KNOWN, mask), seed=1
    )
    m = mask.expand_as(x).bool()
    assert torch.equal(x[m], KNOWN.expand_as(x)[m])
    assert not torch.allclose(x[~m], KNOWN.expand_as(x)[~m], atol=0.05)  # the rest is generated
    assert torch.isfinite(x).all()


def test_inpainting_with_guidance_and_per_sample_noise():
    from diffguide.guidance import classifier_free_guidance

    guided = classifier_free_guidance(gaussian_denoiser(), 3.0, num_classes=2)
    mask = shape_mask("center", SHAPE)
    sigmas = sigma_grid("karras", 6, sigma_min=0.02, sigma_max=20.0)
    fn = inpainting_sampler("ddpm", KNOWN, mask)
    cond = torch.tensor([0, 1, 1, 0])
    big = generate(guided, 4, SHAPE, sigmas=sigmas, sampler=fn, seed=3, cond=cond, batch_size=4)
    small = generate(guided, 4, SHAPE, sigmas=sigmas, sampler=fn, seed=3, cond=cond, batch_size=1)
    assert torch.allclose(big, small, atol=1e-6)  # sample i depends on (seed, i) only
    m = mask.expand_as(big).bool()
    assert torch.equal(big[m], KNOWN.expand_as(big)[m])


def test_generated_pixels_follow_the_model_where_unknown():
    # with mask 0 everywhere, inpainting is plain sampling: the same result as the unwrapped sampler
    mask = torch.zeros(1, 6, 6)
    sigmas = sigma_grid("karras", 6, sigma_min=0.02, sigma_max=20.0)
    a = generate(
        gaussian_denoiser(), 3, SHAPE, sigmas=sigmas, sampler=inpainting_sampler("heun", KNOWN, mask)
    )
    b = generate(gaussian_denoiser(), 3, SHAPE, sigmas=sigmas, sampler="heun")
    assert torch.allclose(a, b, atol=1e-6)


def test_masks(tmp_path):
    from PIL import Image

    assert shape_mask("top", (1, 4, 4))[0, :2].eq(1).all() and shape_mask("top", (1, 4, 4))[0, 2:].eq(0).all()
    arr = np.zeros((4, 4), np.uint8)
    arr[:, 2:] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(str(tmp_path / "m.png"), (3, 4, 4))
    assert m.shape == (1, 4, 4) and m[0, :, 2:].eq(1).all() and m[0, :, :2].eq(0).all()
    with pytest.raises(ConfigError, match="neither an image file nor a named mask"):
        load_mask("lefft", (3, 4, 4))
    with pytest.raises(ConfigError, match="only 0"):
        inpainting_sampler("heun", KNOWN, torch.full((1, 6, 6), 0.5))


# ---------------------------------------------------------------------------------------------
# answers that depend on the replacement itself: correlated Gaussian data, and a spy on the denoiser

G_SHAPE, G_DIM = (1, 2, 2), 4
G_MEAN = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
G_COV = 0.5 * 0.9 ** (torch.arange(4.0)[:, None] - torch.arange(4.0)[None]).abs().double()  # AR(1)
G_MASK = torch.tensor([1.0, 0, 0, 1], dtype=torch.float64)  # pixels 0 and 3 known
G_KNOWN = torch.tensor([1.5, 0.0, 0.0, -1.2], dtype=torch.float64)


def slope(sigma: float) -> torch.Tensor:
    """A(sigma) = C (C + sigma^2 I)^-1: the exact denoiser of N(m, C) is m + A(sigma) (x - m)."""
    return G_COV @ torch.linalg.inv(G_COV + sigma**2 * torch.eye(G_DIM, dtype=torch.float64))


def correlated_gaussian_denoiser():
    def d(x, sigma, cond):
        flat = x.reshape(len(x), G_DIM).double()
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        assert (sig == sig[0]).all(), "one sigma per batch in this test"
        return (G_MEAN + (flat - G_MEAN) @ slope(float(sig[0])).T).reshape(x.shape).to(x.dtype)

    return FunctionDenoiser(d)


def replacement_euler_moments(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and covariance of Euler + replacement on N(m, C), propagated by linear algebra.

    Euler: x' = x + h (x - R(x)), h = (sigma' - sigma) / sigma, with the replacement output
    R(x) = M k + (I - M)(m + A(sigma)(M (k + sigma z) + (I - M) x - m)), z ~ N(0, I) fresh: all affine,
    so the mean and covariance of x follow in closed form from x_0 ~ N(0, sigma_0^2 I).
    """
    eye, mask = torch.eye(G_DIM, dtype=torch.float64), torch.diag(G_MASK)
    free = eye - mask
    mean, cov = torch.zeros(G_DIM, dtype=torch.float64), float(sigmas[0]) ** 2 * eye
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        a, h = slope(sigma), (sigma_next - sigma) / sigma
        expected_r = mask @ G_KNOWN + free @ (G_MEAN + a @ (mask @ G_KNOWN + free @ mean - G_MEAN))
        mean = (1 + h) * mean - h * expected_r
        step = (1 + h) * eye - h * free @ a @ free  # how x's randomness carries over
        kick = -h * sigma * free @ a @ mask  # how the fresh noise z enters
        cov = step @ cov @ step.T + kick @ kick.T
    return mean, cov


def test_generated_pixels_have_the_replacement_methods_exact_distribution():
    """Correlated Gaussian data: the unknown pixels' mean and covariance under Euler + replacement
    equal the closed form above (4 standard errors); without the replacement they would be the
    marginal's, about 0.15 away. (The replacement method is not exact conditioning: the Gaussian
    conditional mean of the unknown pixels is [0.331, -0.033] here, the method gives [0.043, 0.146];
    docs/images.md says so.)"""
    sigmas = sigma_grid("karras", 16, sigma_min=0.002, sigma_max=40.0).double()
    n = 4000
    fn = inpainting_sampler("euler", G_KNOWN.reshape(G_SHAPE), G_MASK.reshape(G_SHAPE))
    x = generate(correlated_gaussian_denoiser(), n, G_SHAPE, sigmas=sigmas, sampler=fn, dtype=torch.float64)
    unknown = torch.tensor([1, 2])
    got = x.reshape(n, G_DIM)[:, unknown]
    mean, cov = replacement_euler_moments(sigmas)
    mean, cov = mean[unknown], cov[unknown][:, unknown]
    standard_error = (torch.diag(cov) / n).sqrt()
    assert ((got.mean(0) - mean).abs() < 4 * standard_error).all(), (got.mean(0), mean)
    # sample covariance: standard error about sqrt(2/n) = 2.2% of each entry's scale
    assert torch.allclose(torch.cov(got.T), cov, atol=0.1 * float(cov.diag().min())), (torch.cov(got.T), cov)
    assert ((mean - G_MEAN[unknown]).abs() > 0.1).all()  # far from the marginal: the test can tell


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddpm", "dpmpp-2m", "euler-maruyama"])
def test_denoiser_sees_the_known_pixels_noised_to_the_current_sigma(sampler):
    """Every call of the wrapped denoiser gets known + sigma z in the known region, z ~ N(0, I) fresh;
    the x0_hat it returns is pasted over by the known pixels."""
    calls = []
    inner = gaussian_denoiser()

    def spy(x, sigma, cond):
        calls.append((x.clone(), float(torch.as_tensor(sigma).reshape(-1)[0])))
        return inner(x, sigma, cond)

    mask = shape_mask("left", SHAPE)
    sigmas = sigma_grid("karras", 8, sigma_min=0.02, sigma_max=20.0)
    steps = []
    fn = inpainting_sampler(sampler, KNOWN, mask)
    generate(FunctionDenoiser(spy), 200, SHAPE, sigmas=sigmas, sampler=fn, callback=steps.append)
    m = mask.expand(200, *SHAPE).bool()
    for info in steps:  # x0_hat as the callback (and the GIF) sees it is pasted over by the known pixels
        assert torch.equal(info["denoised"][m], KNOWN.expand(200, *SHAPE)[m])
    previous = None
    for x, sigma in calls:
        z = (x - KNOWN)[m] / sigma  # 200 x 54 values
        # 10,800 values: standard errors about 0.01 (mean, correlation) and 0.007 (std)
        assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.04, (sigma, z.mean(), z.std())
        if previous is not None:  # fresh at every call: uncorrelated with the previous call's noise
            assert abs(float(torch.corrcoef(torch.stack([z, previous]))[0, 1])) < 0.05
        previous = z
    assert {round(s, 6) for _, s in calls} >= {round(float(s), 6) for s in sigmas[:-1]}
