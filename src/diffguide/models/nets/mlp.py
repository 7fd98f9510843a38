"""A residual MLP for low-dimensional data with noise-level and class conditioning."""

from __future__ import annotations

import torch
from torch import nn

from diffguide.errors import ConfigError
from diffguide.models.nets.embedding import make_embedding
from diffguide.models.nets.perturb import RESIDUAL, residual


class ResidualBlock(nn.Module):
    perturbation_points = (RESIDUAL,)  # models/nets/perturb.py: the guides that perturb this net
    perturbation = None

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, emb):
        r = self.fc1(self.norm(h)) + self.emb(emb)
        r = self.fc2(self.drop(nn.functional.silu(r)))
        return h + residual(self, r)


class MLP(nn.Module):
    """F(x_in, c_noise, cond): input projection, `depth` residual blocks, output projection.

    cond: None or a [N] long tensor of labels; label `num_classes` is the reserved null class
    (used for label dropout and classifier-free guidance), so the embedding has num_classes + 1 rows.
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 256,
        depth: int = 4,
        emb_dim: int = 64,
        num_classes: int = 0,
        dropout: float = 0.0,
        embedding: str = "positional",
    ):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.noise_emb = nn.Sequential(
            make_embedding(embedding, emb_dim),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, emb_dim, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        emb = self.noise_emb(c_noise.reshape(-1).expand(x.shape[0]))
        if self.class_emb is not None:
            if cond is None:
                cond = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(
                torch.as_tensor(cond, device=x.device).long().reshape(-1).expand(x.shape[0])
            )
        emb = nn.functional.silu(emb)
        h = self.inp(x.reshape(x.shape[0], -1).float())
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h))).reshape(x.shape).to(x.dtype)


def check_mlp(model) -> None:
    """Config-time checks of the model.* fields the MLP reads (width, depth), with no data needed."""
    if not (model.width >= 1 and model.depth >= 0):
        raise ConfigError(f"model.width must be >= 1 and model.depth >= 0, got {model.width}, {model.depth}")


def build_mlp(cfg, dataset) -> MLP:
    """The MLP for a RunConfig and its dataset (flattened input; labels if the run is conditional)."""
    m = cfg.model
    check_mlp(m)
    dim = 1
    for s in dataset.shape:
        dim *= s
    num_classes = dataset.num_classes if cfg.data.conditional else 0
    return MLP(dim, m.width, m.depth, m.emb_dim, num_classes, m.dropout, m.embedding)
