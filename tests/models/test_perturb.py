"""Perturbations of a network's own layers (models/nets/perturb.py), each against an answer computed
directly: the identity attention map, a blur by scipy, the mean-query limit, the skipped residual."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffguide.errors import ConfigError
from diffguide.models.nets.mlp import MLP
from diffguide.models.nets.perturb import (
    ATTENTION,
    RESIDUAL,
    DropResidual,
    IdentityAttention,
    SmoothedQuery,
    perturbed,
    select_layers,
)
from diffguide.models.nets.unet import Attention, ResBlock, UNet

ndimage = pytest.importorskip("scipy.ndimage")


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Random weights everywhere: the zero-initialised output layers would hide every perturbation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module.eval()


def attention_and_input(h=6, w=5, channels=64, seed=1):
    module = randomise(Attention(channels))  # two heads of 32 channels
    x = torch.randn(3, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return module.double(), x


def qkv(module, x):
    """The layer's q, k, v as [N, heads, HW, head_dim] (the projection, not the attention under test)."""
    n, c, h, w = x.shape
    q, k, v = module.qkv(module.norm(x)).reshape(n, 3, module.heads, c // module.heads, h * w).unbind(1)
    return q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)


def output(module, x, out):
    """x + proj(out) for an attention output out [N, heads, HW, head_dim]."""
    n, c, h, w = x.shape
    return x + module.proj(out.transpose(-1, -2).reshape(n, c, h, w))


def softmax_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v written out."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def test_pag_identity_attention_is_the_one_hot_identity_map_and_diffusers_score_skip():
    from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode

    module, x = attention_and_input()
    q, k, v = qkv(module, x)
    identity = torch.eye(q.shape[2], dtype=q.dtype)  # the one-hot attention map
    expected = output(module, x, identity @ v)
    with torch.no_grad():
        with perturbed([module], IdentityAttention()):
            got = module(x)
        with AttentionScoreSkipFunctionMode():  # diffusers' PAG: scaled_dot_product_attention returns V
            reference = module(x)
        plain = module(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, reference)
    torch.testing.assert_close(plain, output(module, x, softmax_attention(q, k, v)))
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize(("sigma", "size"), [(0.8, (6, 5)), (0.5, (7, 7)), (2.0, (4, 4))])
def test_seg_blur_is_scipys_gaussian_filter_with_reflect_padding(sigma, size):
    """The query blurred per channel over the grid; kernel ceil(6 sigma)+1 made odd, cut to the grid."""
    module, x = attention_and_input(*size)
    q, k, v = qkv(module, x)
    half = (math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2) // 2
    grid = q.detach().numpy().transpose(0, 1, 3, 2).reshape(3, -1, *size)
    blurred = np.empty_like(grid)
    for i in np.ndindex(grid.shape[:2]):
        for axis, length in ((0, size[0]), (1, size[1])):  # separable, each axis with its own cut
            radius = min(half, (length - 1) // 2)
            src = grid[i] if axis == 0 else blurred[i]
            blurred[i] = ndimage.gaussian_filter1d(src, sigma, axis=axis, mode="mirror", radius=radius)
    q_blur = torch.from_numpy(blurred.reshape(3, 2, 32, -1).transpose(0, 1, 3, 2).copy())
    with torch.no_grad(), perturbed([module], SmoothedQuery(sigma)):
        got = module(x)
    torch.testing.assert_close(got, output(module, x, softmax_attention(q_blur, k, v)).detach())
    with torch.no_grad():
        assert (got - module(x)).abs().max() > 1e-4  # the blur did something


def test_seg_limits_sigma_0_is_the_plain_layer_and_sigma_inf_the_mean_query():
    module, x = attention_and_input()
    q, k, v = qkv(module, x)
    with torch.no_grad():
        plain = module(x)
        for sigma in (0.0, 0.15):  # 0.15: a 3-tap kernel with side weights exp(-22) relative
            with perturbed([module], SmoothedQuery(sigma)):
                torch.testing.assert_close(module(x), plain, rtol=0, atol=1e-12)
        mean_query = q.mean(dim=2, keepdim=True).expand_as(q)  # the paper's sigma -> inf
        expected = output(module, x, softmax_attention(mean_query, k, v))
        for sigma in (math.inf, 1e5):
            with perturbed([module], SmoothedQuery(sigma)):
                torch.testing.assert_close(module(x), expected)
    # every position then attends with the same weights over the keys
    rows = torch.softmax(mean_query @ k.transpose(-1, -2) / math.sqrt(32), dim=-1)
    assert torch.allclose(rows, rows[:, :, :1])


def test_skip_leaves_the_shortcut_and_dropout_drops_residual_elements():
    block = randomise(ResBlock(8, 16, emb_dim=4, dropout=0.0)).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    emb = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        plain, shortcut = block(x, emb), block.skip(x)
        with perturbed([block], DropResidual(1.0)):
            torch.testing.assert_close(block(x, emb), shortcut)
        with perturbed([block], DropResidual(0.25, seed=3)):
            dropped = block(x, emb)
    r, rd = plain - shortcut, dropped - shortcut  # each element: 0 or r / (1 - p)
    kept = (rd - r / 0.75).abs() < 1e-12
    assert bool((kept | (rd == 0)).all())
    assert 0.15 < 1 - kept.double().mean().item() < 0.35  # about p of the 800 elements dropped
    mlp = randomise(MLP(dim=2, width=16, depth=3)).double()
    h = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad(), perturbed([mlp.blocks[1]], DropResidual(1.0)):
        torch.testing.assert_close(mlp.blocks[1](h, torch.zeros(5, 64, dtype=torch.float64)), h)


def test_perturbation_is_removed_on_exit_even_after_an_error():
    net = randomise(UNet(resolution=8, channels=32, attn_resolutions=(4,)))
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    with torch.no_grad():
        before = net(x, c)
        layers = select_layers(net, ATTENTION, "down,mid,up", "layers")
        with pytest.raises(RuntimeError), perturbed(layers, IdentityAttention()):
            net(torch.randn(2, 3, 8, 8), c)  # wrong channel count: fails inside the block
        assert all(m.perturbation is None for m in layers)
        assert torch.equal(net(x, c), before)


def test_layer_names_and_refusals():
    net = UNet(resolution=8, channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
    assert len(select_layers(net, ATTENTION, "mid", "layers")) == 1
    assert len(select_layers(net, RESIDUAL, "mid", "layers")) == 3  # two ResBlocks and the attention
    mlp = MLP(width=8, depth=4)
    assert select_layers(mlp, RESIDUAL, "mid", "layers") == [mlp.blocks[2]]  # the middle block
    with pytest.raises(ConfigError, match="'down.9' names no attention layer of this UNet; its attention"):
        select_layers(net, ATTENTION, "down.9", "layers")
    with pytest.raises(ConfigError, match="this network \\(MLP\\) has no attention layers"):
        select_layers(mlp, ATTENTION, "mid", "layers")
    for bad, message in [(lambda: SmoothedQuery(-1), "seg_blur_sigma must be >= 0"),
                         (lambda: SmoothedQuery(math.nan), "seg_blur_sigma must be >= 0"),
                         (lambda: DropResidual(0.0), "dropout must be in \\(0, 1\\]"),
                         (lambda: DropResidual(1.5), "dropout must be in \\(0, 1\\]")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            bad()
