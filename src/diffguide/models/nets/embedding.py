"""Noise-level embeddings shared by the MLP and the U-Net."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from diffguide.errors import lookup


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar (Vaswani et al. 2017; DDPM's timestep embedding)."""

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar (Tancik et al. 2020; NCSN++'s Gaussian Fourier projection)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * c.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


# name -> embedding class (dim) -> module: the `model.embedding` choices of the MLP and the U-Net
EMBEDDINGS: dict[str, type[nn.Module]] = {"positional": PositionalEmbedding, "fourier": FourierEmbedding}
EmbeddingName = Literal["positional", "fourier"]  # the keys of EMBEDDINGS


def make_embedding(kind: str, dim: int) -> nn.Module:
    """The noise-level embedding registered under `kind`, of width `dim` (even)."""
    return lookup("noise embedding", kind, EMBEDDINGS)(dim)
