"""Inpainting by replacement: keep the known pixels, generate the rest, with any sampler and guidance.

At every denoiser evaluation the known region of x is replaced by the known image noised to the
current sigma, known + sigma * z with fresh per-sample noise z (the "replacement" method of Song et
al. 2021, score-SDE, appendix I.2, and of RePaint, Lugmayr et al. 2022, without its resampling
loops), and x0_hat is pasted over by the known pixels. The final output is pasted once more, so it
equals the known image exactly where the mask says known, whatever the sampler does at the last step.
It is not exact conditioning: the known pixels are noised independently of the unknown pixels' path,
so the unknown ones only approximately follow p(unknown | known) (tests/test_inpaint.py measures this
on a correlated Gaussian, docs/images.md gives the figures).

This is a sampler wrapper: `inpainting_sampler(sampler, known, mask)` returns a function with the
sampler signature, usable by `generate` like any named sampler. The noise z comes from the sampler's
own per-sample generator, so sample i still depends on (seed, i) only. The wrapped denoiser can be
any denoiser, guided or not.

mask: 1 = known (kept), 0 = to generate; shape [H, W], [1 or C, H, W] or [N, C, H, W].
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffguide.denoiser import append_dims
from diffguide.errors import ConfigError, DataError, unknown
from diffguide.noise import noise_like
from diffguide.samplers.registry import get_sampler

MASK_SHAPES = ("left", "right", "top", "bottom", "center", "border")


class ReplacementDenoiser(torch.nn.Module):
    """D'(x, sigma) = paste(known, D(paste(known + sigma z, x), sigma)): the replacement method."""

    def __init__(self, denoiser, known: torch.Tensor, mask: torch.Tensor, generator=None):
        super().__init__()
        self.denoiser, self.known, self.mask, self.generator = denoiser, known, mask, generator

    def forward(self, x, sigma, cond=None):
        known, mask = self.known.to(x), self.mask.to(x)
        s = append_dims(torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0]), x.ndim)
        noisy_known = known + s * noise_like(x, self.generator)
        x = mask * noisy_known + (1 - mask) * x
        return mask * known + (1 - mask) * self.denoiser(x, sigma, cond)


def inpainting_sampler(sampler: str | Callable, known: torch.Tensor, mask: torch.Tensor) -> Callable:
    """A sampler function that inpaints: runs `sampler` on the replacement denoiser, then pastes."""
    fn = get_sampler(sampler) if isinstance(sampler, str) else sampler
    known, mask = torch.as_tensor(known).float(), torch.as_tensor(mask).float()
    if ((mask != 0) & (mask != 1)).any():
        raise ConfigError("the inpainting mask must hold only 0 (generate) and 1 (known)")

    def sample(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **kwargs):
        k, m = known.to(x).expand_as(x), mask.to(x).expand_as(x)
        wrapped = ReplacementDenoiser(denoiser, k, m, generator)
        out = fn(wrapped, x, sigmas, cond=cond, generator=generator, callback=callback, **kwargs)
        return m * k + (1 - m) * out

    sample.__name__ = f"inpaint_{getattr(fn, '__name__', 'sampler')}"
    return sample


def shape_mask(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A named mask [1, H, W] (1 = known): 'left' keeps the left half, 'center' keeps all but the centre..."""
    _, h, w = shape
    m = torch.zeros(1, h, w)
    if name == "left":
        m[..., : w // 2] = 1
    elif name == "right":
        m[..., w // 2 :] = 1
    elif name == "top":
        m[:, : h // 2] = 1
    elif name == "bottom":
        m[:, h // 2 :] = 1
    elif name == "center":  # known everywhere except a centred square of half the size
        m[:] = 1
        m[:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 0
    elif name == "border":  # only the centre is known
        m[:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 1
    else:
        raise unknown("mask shape", name, MASK_SHAPES)
    return m


def load_image(path: str | Path, shape: tuple[int, ...], background=None) -> torch.Tensor:
    """An image file as [C, H, W] in [-1, 1] for a dataset's shape (converted; resized if needed).

    RGBA images are composited over `background` (RGB in [0, 1]) when given, else over black.
    """
    from PIL import Image

    c, h, w = shape
    try:
        img = Image.open(path)
        img.load()
    except OSError as e:
        raise DataError(f"cannot read image {str(path)!r}: {e}") from None
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        arr = np.asarray(img, dtype=np.float32) / 255
        bg = np.zeros(3, np.float32) if background is None else np.asarray(background, np.float32)
        rgb = arr[..., :3] * arr[..., 3:] + bg * (1 - arr[..., 3:])
        img = Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.NEAREST)
    arr = np.asarray(img, dtype=np.float32).reshape(h, w, c)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def load_mask(spec: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A mask [1, H, W] (1 = known) from a named shape (left, right, ...) or an image (white = known)."""
    if spec in MASK_SHAPES:
        return shape_mask(spec, shape)
    if not Path(spec).is_file():
        raise ConfigError(
            f"--mask {spec!r} is neither an image file nor a named mask ({', '.join(MASK_SHAPES)})"
        )
    m = load_image(spec, (1, *shape[1:]))
    return (m > 0).float()
