"""Perturbations of a network's own layers, for guides that are a worse version of the same network.

A perturbable layer reads its `perturbation` attribute (None: the unperturbed layer) at two points:
an attention layer computes its attention through `attend`, and a residual layer (a U-Net ResBlock or
Attention, an MLP ResidualBlock) passes its residual branch through `residual`. `perturbed(net, ...)`
sets the perturbation on the chosen layers for the duration of a `with` block and always removes it,
so only the guide's forward pass sees it (guidance/perturbed.py). The perturbations:

- IdentityAttention: the self-attention map replaced by the identity, so the attention output is V
  (perturbed-attention guidance, PAG; Ahn et al. 2024, "Self-rectifying diffusion sampling with
  perturbed-attention guidance", eq. 9).
- SmoothedQuery: the query blurred by a 2D Gaussian of std `sigma` over the layer's H x W grid, which
  blurs the attention logits along the query axis (smoothed-energy guidance, SEG; Hong 2024,
  "Smoothed energy guidance: guiding diffusion models with reduced energy curvature of attention",
  sec. 3.3). sigma = 0 is the unperturbed layer; sigma = inf (or above `inf_threshold`) replaces every
  query by the mean query, the paper's limit. Kernel size ceil(6 sigma) + 1 rounded up to odd and
  reflect padding follow the paper's code; the kernel is cut to the grid when it is larger.
- DropResidual: the residual branch dropped with probability p per element (and scaled by 1 / (1 - p),
  as nn.Dropout), from a generator seeded once; p = 1 skips the layer (output = its shortcut), which
  is skip-layer guidance (SLG); 0 < p < 1 is diffusers' AutoGuidance (dropout on chosen layers).

`noisy_embedding` perturbs no layer but the net's noise (time-step) embedding, through a forward hook
on `noise_emb` held for a `with` block: the guide of time-step guidance (TSG).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from diffguide.errors import ConfigError

ATTENTION, RESIDUAL = "attention", "residual"


class Perturbation:
    """No change; subclasses override `attention` or `residual` and name which one in `point`."""

    point = RESIDUAL

    def attention(self, q, k, v, size: tuple[int, int]) -> torch.Tensor:
        """q, k, v: [N, heads, HW, head_dim] over an H x W grid `size` -> [N, heads, HW, head_dim]."""
        return F.scaled_dot_product_attention(q, k, v)

    def residual(self, r: torch.Tensor) -> torch.Tensor:
        return r


class IdentityAttention(Perturbation):
    """PAG: the attention map is the identity, so each position's output is its own value."""

    point = ATTENTION

    def attention(self, q, k, v, size):
        return v


def gaussian_kernel(sigma: float, length: int) -> torch.Tensor:
    """The normalised 1D Gaussian of std sigma, size ceil(6 sigma) + 1 rounded up to odd, cut to the
    largest odd size <= length (so reflect padding fits the grid)."""
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = max(1, min(size, length - (1 - length % 2)))
    half = (size - 1) / 2
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, size, dtype=torch.float64) / sigma) ** 2)
    return pdf / pdf.sum()


class SmoothedQuery(Perturbation):
    """SEG: the query blurred over the grid by a Gaussian of std `sigma` (inf: the mean query)."""

    point = ATTENTION

    def __init__(self, sigma: float, inf_threshold: float = 9999.0):
        sigma = float(sigma)
        if not sigma >= 0:  # NaN fails too
            raise ConfigError(f"seg_blur_sigma must be >= 0 (0: no blur, inf: the mean query), got {sigma}")
        self.sigma, self.inf_threshold = sigma, float(inf_threshold)

    def blur(self, q: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """q [N, heads, HW, D] blurred over the H x W grid, per channel."""
        if self.sigma == 0:
            return q
        if self.sigma >= self.inf_threshold:
            return q.mean(dim=2, keepdim=True).expand_as(q)
        n, heads, hw, d = q.shape
        h, w = size
        grid = q.permute(0, 1, 3, 2).reshape(n, heads * d, h, w)
        for dim, length in ((2, h), (3, w)):  # separable: rows then columns
            kernel = gaussian_kernel(self.sigma, length).to(grid)
            pad = len(kernel) // 2
            if pad == 0:
                continue
            padding = (0, 0, pad, pad) if dim == 2 else (pad, pad, 0, 0)
            shape = (1, 1, len(kernel), 1) if dim == 2 else (1, 1, 1, len(kernel))
            grid = F.conv2d(
                F.pad(grid, padding, mode="reflect"),
                kernel.reshape(shape).expand(heads * d, 1, *shape[2:]),
                groups=heads * d,
            )
        return grid.reshape(n, heads, d, hw).permute(0, 1, 3, 2)

    def attention(self, q, k, v, size):
        return F.scaled_dot_product_attention(self.blur(q, size), k, v)


class DropResidual(Perturbation):
    """SLG (p = 1: the layer skipped) and diffusers' AutoGuidance (0 < p < 1: dropout of its residual)."""

    def __init__(self, p: float = 1.0, seed: int = 0):
        p = float(p)
        if not 0 < p <= 1:  # NaN fails too
            raise ConfigError(f"dropout must be in (0, 1] (1: skip the layer), got {p}")
        self.p = p
        self.generator = torch.Generator().manual_seed(int(seed))

    def residual(self, r):
        if self.p == 1:
            return torch.zeros_like(r)
        keep = torch.rand(r.shape, generator=self.generator) >= self.p
        return r * keep.to(r.device, r.dtype) / (1 - self.p)


def attend(module: nn.Module, q, k, v, size: tuple[int, int]) -> torch.Tensor:
    """The attention of `module` under its perturbation (plain scaled dot-product attention without)."""
    perturbation = getattr(module, "perturbation", None)
    if perturbation is None:
        return F.scaled_dot_product_attention(q, k, v)
    return perturbation.attention(q, k, v, size)


def residual(module: nn.Module, r: torch.Tensor) -> torch.Tensor:
    """The residual branch of `module` under its perturbation."""
    perturbation = getattr(module, "perturbation", None)
    return r if perturbation is None else perturbation.residual(r)


def perturbable_layers(net: nn.Module, point: str) -> dict[str, nn.Module]:
    """name -> layer of `net` (named as in net.named_modules()) with the hook `point` (ATTENTION or
    RESIDUAL), in the network's order."""
    return {name: m for name, m in net.named_modules() if point in getattr(m, "perturbation_points", ())}


def middle(net: nn.Module) -> str:
    """What the layer name 'mid' means: the U-Net's mid block, or the MLP's middle residual block."""
    if hasattr(net, "mid"):
        return "mid"
    blocks = getattr(net, "blocks", None)
    return f"blocks.{len(blocks) // 2}" if blocks is not None and len(blocks) else "mid"


def select_layers(net: nn.Module, point: str, layers: str | Sequence[str], what: str) -> list[nn.Module]:
    """The layers named by `layers` (comma-separated names or name prefixes of net.named_modules(),
    e.g. 'mid', 'down.3', 'up', 'blocks.1') that have the hook `point`; ConfigError naming the choices."""
    tokens = [t.strip() for t in (layers.split(",") if isinstance(layers, str) else layers) if t.strip()]
    found = perturbable_layers(net, point)
    if not found:
        raise ConfigError(f"{what}: this network ({type(net).__name__}) has no {point} layers to perturb")
    chosen = []
    for token in tokens or ["mid"]:
        prefix = middle(net) if token == "mid" else token
        match = [m for name, m in found.items() if name == prefix or name.startswith(prefix + ".")]
        if not match:
            raise ConfigError(
                f"{what}: {token!r} names no {point} layer of this {type(net).__name__}; its {point} layers: "
                f"{', '.join(found)} (a name or a prefix such as 'mid')"
            )
        chosen += [m for m in match if m not in chosen]
    return chosen


@contextmanager
def perturbed(layers: Sequence[nn.Module], perturbation: Perturbation) -> Iterator[None]:
    """Apply `perturbation` to `layers` inside the block; removed on exit, also on an exception."""
    busy = [m for m in layers if getattr(m, "perturbation", None) is not None]
    if busy:
        raise RuntimeError("a layer is already perturbed: perturbed() blocks do not nest on the same layer")
    try:
        for m in layers:
            m.perturbation = perturbation
        yield
    finally:
        for m in layers:
            m.perturbation = None


def noise_embedding(net: nn.Module) -> nn.Module | None:
    """The module of `net` that maps the noise input c_noise to the noise (time-step) embedding [N, D]
    the blocks read (`noise_emb` of diffguide's MLP and U-Net), or None for a net without one."""
    module = getattr(net, "noise_emb", None)
    return module if isinstance(module, nn.Module) else None


@contextmanager
def noisy_embedding(embedding: nn.Module, scale: torch.Tensor, generator: torch.Generator) -> Iterator[None]:
    """Inside the block, `embedding`'s output e [N, ...] becomes e + scale[:, None] n, n ~ N(0, I) drawn
    (float32, on the CPU, then moved) from `generator` at each call: the perturbed time-step embedding of
    time-step guidance. Only the embedding changes: the preconditioning around the net does not see it."""

    def add_noise(module, args, output):
        n = torch.randn(output.shape, generator=generator).to(output.device, output.dtype)
        return output + scale.to(output.device, output.dtype).reshape(-1, *[1] * (output.ndim - 1)) * n

    handle = embedding.register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()
