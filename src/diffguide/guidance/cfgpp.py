"""CFG++ (Chung et al. 2024, "CFG++: manifold-constrained classifier free guidance for diffusion
models"): guide the denoised estimate, but renoise with the guide's (unconditional) noise estimate.

A sampler hook, not only a combinator: in scale-free coordinates a DDIM / Euler step is
x_next = D + sigma_next * eps with eps = (x - D) / sigma; CFG++ takes D = D_guide + w (D_main - D_guide)
(the paper's lambda is our w, in [0, 1] in the paper) and eps = (x - D_guide) / sigma. With w = 0 it is
the plain sampler on the guide. It is defined for the first-order deterministic step (euler, ddim with
eta = 0, which are the same method); other samplers refuse it (`check_sampler`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffguide.denoiser import append_dims
from diffguide.errors import ConfigError
from diffguide.guidance.combinators import _Wrap, check_weight
from diffguide.samplers.base import _report, check_sigmas

SAMPLERS = ("euler", "ddim")


class CFGPlusPlus(nn.Module):
    """main and guide with weight w; as a plain denoiser it is CFG, `pair` gives what the CFG++ step needs."""

    def __init__(self, main: Callable, guide: Callable, w: float):
        super().__init__()
        self.main = main if isinstance(main, nn.Module) else _Wrap(main)
        self.guide = guide if isinstance(guide, nn.Module) else _Wrap(guide)
        self.w = check_weight(w)

    def pair(self, x, sigma, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided D, the guide's D) at (x, sigma)."""
        d_guide = self.guide(x, sigma, cond)
        return d_guide + self.w * (self.main(x, sigma, cond) - d_guide), d_guide

    def forward(self, x, sigma, cond=None):
        return self.pair(x, sigma, cond)[0]


def check_sampler(name: str) -> None:
    """Refuse samplers CFG++ is not defined for, naming the ones it is."""
    if name not in SAMPLERS:
        raise ConfigError(
            f"CFG++ is defined for the first-order deterministic step ({', '.join(SAMPLERS)}), not for "
            f"sampler {name!r}; use --sampler euler"
        )


@torch.no_grad()
def sample_euler_cfgpp(
    denoiser: CFGPlusPlus, x, sigmas, *, cond=None, generator=None, callback=None, **options
):
    """The Euler / DDIM (eta = 0) step with CFG++'s renoising: x_next = D_w + sigma_next (x - D_guide) / sigma."""
    if options:
        raise ConfigError(
            f"CFG++ takes no sampler options (its step is DDIM's with eta = 0), got {sorted(options)}"
        )
    if not hasattr(denoiser, "pair"):
        raise ConfigError("sample_euler_cfgpp needs a CFGPlusPlus denoiser (guided and guide predictions)")
    check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        s = sigma.to(x.dtype).expand(x.shape[0])
        denoised, d_guide = denoiser.pair(x, s, cond)
        eps = (x - d_guide) / append_dims(s, x.ndim)
        x = denoised + sigma_next.to(x.dtype) * eps
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x
