"""Inpainting keeps the known pixels exactly, with any sampler and with guidance; masks load as promised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffguide.denoiser import FunctionDenoiser, append_dims
from diffguide.errors import ConfigError
from diffguide.inpaint import inpainting_sampler, load_mask, shape_mask
from diffguide.sampling import generate, sigma_grid

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
