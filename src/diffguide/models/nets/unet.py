"""A small U-Net for images: the DDPM / ADM family (Ho et al. 2020; Dhariwal & Nichol 2021).

Residual blocks with GroupNorm and an adaptive scale-shift from the embedding, self-attention at
chosen resolutions, dropout, `num_blocks` blocks per resolution and a channel multiplier per level.
GroupNorms have min(32, C/4) groups for each layer's C (EDM), or one count for every layer
(`norm_groups`, diffusers' `norm_num_groups`, which an export to diffusers needs: adapters/export.py).
The embedding is the noise level (sinusoidal or Fourier) plus the condition:

- class labels: an `nn.Embedding` with one extra row, index `num_classes`, the null class (label
  dropout and classifier-free guidance feed it);
- attributes (CryptoPunks): a dict {"type": [N] long, "accessories": [N, A] multi-hot}; type -1 and
  an accessory row of -1 mean "null". The type goes through an embedding with a null row, the
  multi-hot vector through a learned linear projection, and a null accessory row uses its own learned
  vector, so each part can be dropped independently (see data/attributes.py).

Any spatial size works: a downsampling conv rounds up (7 -> 4) and each upsampling resizes to the
skip connection's size, so 8x8 digits, 24x24 punks and 28x28 MNIST need no padding. Nothing here
names a device; the code only uses reshape (never view) so channels-last inputs work.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from diffguide.errors import ConfigError
from diffguide.models.nets.embedding import make_embedding
from diffguide.models.nets.perturb import ATTENTION, RESIDUAL, attend, residual


def group_norm(channels: int, groups: int = 0) -> nn.GroupNorm:
    """GroupNorm with `groups` groups; 0: up to 32 groups of at least 4 channels (EDM's choice), dividing
    `channels`."""
    if groups:
        if channels % groups:
            raise ValueError(
                f"norm_groups={groups} does not divide a layer's {channels} channels; use a divisor of every "
                "channel count (e.g. of model.channels), or 0 for min(32, C/4) groups per layer"
            )
    else:
        groups = max(1, min(32, channels // 4))
        while channels % groups:
            groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-dropout-conv, plus skip."""

    perturbation_points = (RESIDUAL,)  # models/nets/perturb.py: the guides that perturb this net
    perturbation = None

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, norm_groups: int = 0):
        super().__init__()
        self.norm1 = group_norm(cin, norm_groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = group_norm(cout, norm_groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + residual(self, h)


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions (heads of 32 channels, at least one)."""

    perturbation_points = (ATTENTION, RESIDUAL)
    perturbation = None

    def __init__(self, channels: int, norm_groups: int = 0):
        super().__init__()
        self.heads = max(1, channels // 32)
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, emb=None):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        # q, k, v: [N, heads, head_dim, HW] -> attention over HW
        out = attend(self, q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), (h, w))
        return x + residual(self, self.proj(out.transpose(-1, -2).reshape(n, c, h, w)))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class ConditionEmbedding(nn.Module):
    """Embeds a condition: class labels, or a {"type", "accessories"} attribute dict, into emb_dim."""

    def __init__(self, emb_dim: int, num_classes: int = 0, num_types: int = 0, num_accessories: int = 0):
        super().__init__()
        self.num_classes, self.num_types, self.num_accessories = num_classes, num_types, num_accessories
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.type_emb = nn.Embedding(num_types + 1, emb_dim) if num_types else None
        if num_accessories:
            self.accessory_proj = nn.Linear(num_accessories, emb_dim)
            self.accessory_null = nn.Parameter(torch.zeros(emb_dim))
        else:
            self.accessory_proj = None

    def forward(self, cond, n: int, device) -> torch.Tensor | None:
        if isinstance(cond, dict) or (cond is None and self.type_emb is not None):
            return self._attributes(cond or {}, n, device)
        if self.class_emb is None:
            return None
        return self.class_emb(self._labels(cond, n, device))

    def _labels(self, cond, n: int, device) -> torch.Tensor:
        """[n] class labels, None -> the null class `num_classes`."""
        if cond is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return torch.as_tensor(cond, device=device).long().reshape(-1).expand(n)

    def _parts(self, cond: dict, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(type [n] with null -> num_types, accessories [n, A] clamped to 0/1, null-accessories [n, 1] bool)."""
        kind = cond.get("type")
        kind = torch.full((n,), -1, device=device) if kind is None else torch.as_tensor(kind, device=device)
        kind = kind.long().reshape(-1).expand(n)
        kind = torch.where(kind < 0, torch.full_like(kind, self.num_types), kind)
        acc = cond.get("accessories")
        if acc is None:
            acc = torch.full((n, self.num_accessories), -1.0, device=device)
        acc = torch.as_tensor(acc, device=device).float().reshape(-1, self.num_accessories).expand(n, -1)
        return kind, acc.clamp(min=0), (acc < 0).all(dim=1, keepdim=True)

    def _attributes(self, cond: dict, n: int, device) -> torch.Tensor:
        if self.type_emb is None:
            raise ValueError("this network was built for class labels, not an attribute dict")
        unknown_keys = set(cond) - {"type", "accessories"}
        if unknown_keys:
            raise ValueError(f"unknown condition keys {sorted(unknown_keys)}; expected 'type', 'accessories'")
        kind, acc, null = self._parts(cond, n, device)
        emb = self.type_emb(kind)
        projected = self.accessory_proj(acc)
        return emb + torch.where(
            null, self.accessory_null.to(projected.dtype).expand_as(projected), projected
        )

    def indicators(self, cond, n: int, device) -> torch.Tensor:
        """The condition as one 0/1 vector per sample: one-hot class (null included), or one-hot type
        (null included) + the accessory multi-hot + a null-accessories flag."""
        if self.type_emb is None:
            return F.one_hot(self._labels(cond, n, device), self.num_classes + 1).float()
        kind, acc, null = self._parts(cond or {}, n, device)
        return torch.cat([F.one_hot(kind, self.num_types + 1).float(), acc, null.float()], dim=1)

    @property
    def indicator_dim(self) -> int:
        if self.type_emb is None:
            return self.num_classes + 1
        return self.num_types + 1 + self.num_accessories + 1


class ConditionMap(nn.Module):
    """A learned image per condition entry, fed to the first convolution as extra input channels.

    map = sum over the condition's active entries (class, or type and each accessory) of a learned
    [channels, H, W] template: where an attribute lives in the picture (a CryptoPunk's earring is
    always at the same pixels) is given to the network at full resolution, instead of only through
    the per-channel scale and shift of the embedding. Zero-initialised, so training starts from the
    plain U-Net.
    """

    def __init__(self, indicator_dim: int, channels: int, height: int, width: int):
        super().__init__()
        self.shape = (channels, height, width)
        self.templates = nn.Parameter(torch.zeros(indicator_dim, channels * height * width))

    def forward(self, indicators: torch.Tensor) -> torch.Tensor:
        return (indicators @ self.templates).reshape(-1, *self.shape)


class UNet(nn.Module):
    """F(x_in, c_noise, cond) -> [N, C, H, W]: the U-Net described in this module's docstring."""

    def __init__(
        self,
        in_channels: int = 1,
        resolution: int = 8,
        channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2),
        num_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (),
        dropout: float = 0.0,
        emb_dim: int = 128,
        embedding: str = "positional",
        num_classes: int = 0,
        num_types: int = 0,
        num_accessories: int = 0,
        norm_groups: int = 0,
        cond_map_channels: int = 0,
    ):
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult must name at least one level, e.g. [1, 2]")
        self.noise_emb = nn.Sequential(
            make_embedding(embedding, channels),
            nn.Linear(channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.cond_emb = ConditionEmbedding(emb_dim, num_classes, num_types, num_accessories)
        conditional = bool(num_classes or num_types)
        self.cond_map = None
        if cond_map_channels and conditional:
            dim = self.cond_emb.indicator_dim
            self.cond_map = ConditionMap(dim, cond_map_channels, resolution, resolution)
            in_map = cond_map_channels
        else:
            in_map = 0
        attn = set(int(r) for r in attn_resolutions)
        g = int(norm_groups)  # GroupNorm groups of every layer; 0: min(32, C/4) per layer

        self.conv_in = nn.Conv2d(in_channels + in_map, channels * channel_mult[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels * channel_mult[0]]
        c, res = channels * channel_mult[0], resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                layer = nn.ModuleList([ResBlock(c, channels * mult, emb_dim, dropout, g)])
                c = channels * mult
                if res in attn:
                    layer.append(Attention(c, g))
                self.down.append(layer)
                skips.append(c)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(c)]))
                skips.append(c)
                res = (res + 1) // 2
        self.mid = nn.ModuleList(
            [ResBlock(c, c, emb_dim, dropout, g), Attention(c, g), ResBlock(c, c, emb_dim, dropout, g)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                layer = nn.ModuleList([ResBlock(c + skips.pop(), channels * mult, emb_dim, dropout, g)])
                c = channels * mult
                if res in attn:
                    layer.append(Attention(c, g))
                self.up.append(layer)
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(c)]))
                res = res * 2
        self.norm_out = group_norm(c, g)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        n = x.shape[0]
        emb = self.noise_emb(torch.as_tensor(c_noise, device=x.device).reshape(-1).expand(n))
        extra = self.cond_emb(cond, n, x.device)
        if extra is not None:
            emb = emb + extra
        emb = F.silu(emb)
        h = x.float()
        if self.cond_map is not None:
            maps = self.cond_map(self.cond_emb.indicators(cond, n, x.device))
            h = torch.cat([h, maps[..., : h.shape[-2], : h.shape[-1]]], dim=1)
        h = self.conv_in(h)
        hs = [h]
        for layer in self.down:
            for module in layer:
                h = module(h, emb)
            hs.append(h)
        for module in self.mid:
            h = module(h, emb)
        for layer in self.up:
            if isinstance(layer[0], Upsample):
                h = layer[0](h, hs[-1].shape[-2:])
                continue
            h = torch.cat([h, hs.pop()], dim=1)
            for module in layer:
                h = module(h, emb)
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_unet(model) -> None:
    """Config-time checks of the model.* fields the U-Net reads (channels .. norm_groups), no data needed."""
    m = model
    if not (m.channels >= 1 and m.num_blocks >= 1):
        raise ConfigError(
            f"model.channels and model.num_blocks must be >= 1, got {m.channels}, {m.num_blocks}"
        )
    if m.channels % 2:
        raise ConfigError(
            f"model.channels must be even for the U-Net (its noise embedding), got {m.channels}"
        )
    if not (m.channel_mult and all(_positive_int(c) for c in m.channel_mult)):
        raise ConfigError(
            f"model.channel_mult must be a non-empty list of integers >= 1, got {m.channel_mult}"
        )
    if not all(_positive_int(r) for r in m.attn_resolutions):
        raise ConfigError(f"model.attn_resolutions must be a list of integers >= 1, got {m.attn_resolutions}")
    maps = getattr(m, "cond_map_channels", 0)
    if isinstance(maps, bool) or not isinstance(maps, int) or maps < 0:
        raise ConfigError(
            f"model.cond_map_channels must be an integer >= 0 (0: no condition map; 4 is a good start), "
            f"got {maps!r}"
        )
    # model.norm_groups: GroupNorm groups of every layer (diffusers' norm_num_groups, needed to export);
    # 0 = min(32, C/4) per layer. Read with a default so a config without the key builds the same net.
    norm_groups = getattr(m, "norm_groups", 0)
    if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 0:
        raise ConfigError(
            f"model.norm_groups must be 0 (min(32, C/4) groups per layer) or a group count >= 1 dividing "
            f"every layer's channels, got {norm_groups!r}"
        )


def build_unet(cfg, dataset) -> UNet:
    """The U-Net for a RunConfig and dataset (shape (C, H, W); labels from the dataset if conditional)."""
    if len(dataset.shape) != 3:
        raise ConfigError(
            f"model.arch='unet' needs image data of shape (C, H, W); dataset {cfg.data.name!r} has "
            f"shape {tuple(dataset.shape)} (use model.arch='mlp')"
        )
    m = cfg.model
    check_unet(m)
    num_classes = num_types = num_accessories = 0
    if cfg.data.conditional:
        attrs = getattr(dataset, "attributes", None)
        if attrs is not None:
            num_types, num_accessories = len(attrs.types), len(attrs.accessories)
        else:
            num_classes = dataset.num_classes
    try:
        return UNet(
            in_channels=dataset.shape[0],
            resolution=dataset.shape[1],
            channels=m.channels,
            channel_mult=tuple(int(v) for v in m.channel_mult),
            num_blocks=m.num_blocks,
            attn_resolutions=tuple(int(v) for v in m.attn_resolutions),
            dropout=m.dropout,
            emb_dim=m.emb_dim,
            embedding=m.embedding,
            num_classes=num_classes,
            num_types=num_types,
            num_accessories=num_accessories,
            norm_groups=getattr(m, "norm_groups", 0),
            cond_map_channels=getattr(m, "cond_map_channels", 0),
        )
    except ValueError as e:  # a norm_groups that does not divide some layer's channels
        raise ConfigError(f"model.norm_groups: {e}") from None
