"""Preconditioning wrappers turn a network's target (eps, x0, v, score, EDM's F) back into x0 exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffguide.denoiser import (
    ClipDenoised,
    EDMPrecond,
    FunctionDenoiser,
    ProcessPrecond,
    append_dims,
    score_from_denoiser,
)
from diffguide.errors import ConfigError
from diffguide.mixtures import tree_mixture
from diffguide.processes import PROCESSES

F64 = torch.float64

# How each process tells the network its noise level (c_noise), inverted here from the papers'
# conventions: DDPM gets the timestep, VP-SDE 999 t, VE (EDM's VE) log(sigma / 2), the seed's VE t,
# EDM log(sigma) / 4. Each returns sigma.
SIGMA_FROM_C_NOISE = {
    "ddpm": lambda p, c: p.sigma(c),
    "vp": lambda p, c: p.sigma(c / 999),
    "ve": lambda p, c: 2 * c.exp(),
    "ve-seed": lambda p, c: p.sigma(c),
    "edm": lambda p, c: (4 * c).exp(),
    "flow": lambda p, c: (c / 1000) / (1 - c / 1000),  # diffusers' timestep 1000 t, sigma = t / (1 - t)
}
VARIANCE_PRESERVING = {"ddpm", "vp"}


class OracleNet(nn.Module):
    """A 'perfect' network: knows x0 and outputs the exact training target for it.

    Input: the process's own coordinates x_t = alpha (x0 + sigma eps), alpha = 1 / sqrt(1 + sigma^2)
    for VP processes and 1 for VE ones. Targets: eps; x0; v = (alpha eps - sigma_t x0) /
    sqrt(alpha^2 + sigma_t^2) with sigma_t = alpha sigma (Salimans & Ho 2022; the normalisation makes
    it hold for VE too); score: std_t * grad log q(x_t | x0) = -(x_t - alpha x0) / (alpha sigma) = -eps;
    velocity (rectified flow, where alpha = 1 - t = 1 / (1 + sigma)): eps - x0.
    """

    def __init__(self, x0, process_name, process, target):
        super().__init__()
        self.x0, self.name, self.process, self.target = x0, process_name, process, target

    def forward(self, x_t, c_noise, cond=None):
        sigma = append_dims(SIGMA_FROM_C_NOISE[self.name](self.process, c_noise.to(F64)), x_t.ndim)
        alpha = 1 / (1 + sigma**2).sqrt() if self.name in VARIANCE_PRESERVING else torch.ones_like(sigma)
        if self.name == "flow":  # x_t = (1 - t) x0 + t eps: alpha = 1 - t = 1 / (1 + sigma)
            alpha = 1 / (1 + sigma)
        eps = (x_t / alpha - self.x0) / sigma
        sigma_t = alpha * sigma
        if self.target == "eps":
            return eps
        if self.target == "x0":
            return self.x0
        if self.target == "v":
            return (alpha * eps - sigma_t * self.x0) / (alpha**2 + sigma_t**2).sqrt()
        if self.target == "velocity":  # rectified flow's eps - x0
            return eps - self.x0
        return -(x_t - alpha * self.x0) / sigma_t  # score target


def process_sigmas(process) -> torch.Tensor:
    """A spread of noise levels inside the process's range (DDPM: at and between its timesteps)."""
    t = torch.linspace(process.t_min, process.t_max, 9, dtype=F64)
    if process.discrete:
        t = torch.tensor([0.0, 1.0, 17.0, 17.5, 250.0, 600.25, 998.0, 999.0], dtype=F64)
    return process.sigma(t)


@pytest.mark.parametrize("target", ["eps", "x0", "v", "score", "velocity"])
@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_process_precond_recovers_x0(process_name, target):
    process = PROCESSES[process_name]()
    gen = torch.Generator().manual_seed(0)
    sigmas = process_sigmas(process)
    n = len(sigmas)
    x0 = torch.randn(n, 3, 2, generator=gen, dtype=F64)  # rank 3: the wrapper is rank-agnostic
    eps = torch.randn(n, 3, 2, generator=gen, dtype=F64)
    x = x0 + append_dims(sigmas, 3) * eps  # scale-free coordinates
    denoiser = ProcessPrecond(OracleNet(x0, process_name, process, target), process, target)
    torch.testing.assert_close(denoiser(x, sigmas), x0, rtol=1e-8, atol=1e-8 * float(sigmas.max()))


def test_process_precond_unknown_target():
    with pytest.raises(ConfigError, match="did you mean 'eps'"):
        ProcessPrecond(nn.Identity(), PROCESSES["edm"](), "epsilon")


class Probe(nn.Module):
    """F that returns a constant and records what it was given."""

    def __init__(self, value: float):
        super().__init__()
        self.value, self.seen = value, None

    def forward(self, x_in, c_noise, cond=None):
        self.seen = (x_in, c_noise)
        return torch.full_like(x_in, self.value)


def test_edm_precond_defining_properties():
    """Karras et al. 2022, App. B.6: for data of std sigma_data, the net's input c_in x and its
    effective target (x0 - c_skip x) / c_out have unit variance, and c_skip minimises c_out, i.e.
    c_skip = argmin_c [(1 - c)^2 sd^2 + c^2 sigma^2]. The coefficients are read off the module by
    probing F = 0 and F = 1 (D = c_skip x + c_out F), not taken from its code."""
    sd = 0.5
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=F64)
    x = torch.linspace(-1, 1, len(sigma), dtype=F64)[:, None] + 2.0
    zero, one = Probe(0.0), Probe(1.0)
    c_skip = EDMPrecond(zero, sd)(x, sigma) / x
    c_out = EDMPrecond(one, sd)(x, sigma) - c_skip * x
    c_in = zero.seen[0] / x
    s = sigma[:, None]
    torch.testing.assert_close(c_in**2 * (sd**2 + s**2), torch.ones_like(c_in))  # Var(c_in x) = 1
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * s**2) / c_out**2  # Var((x0 - c_skip x) / c_out)
    torch.testing.assert_close(target_var, torch.ones_like(target_var))
    for i, si in enumerate(sigma.tolist()):  # c_skip minimises the target's variance before scaling
        grid = torch.linspace(0, 1, 200_001, dtype=F64)
        best = grid[((1 - grid) ** 2 * sd**2 + grid**2 * si**2).argmin()]
        assert float(c_skip[i, 0]) == pytest.approx(float(best), abs=1e-5)
    torch.testing.assert_close(zero.seen[1], sigma.log() / 4)  # c_noise = ln(sigma) / 4


def test_edm_precond_recovers_x0_with_the_ideal_f():
    """With F = (x0 - c_skip x) / c_out, the EDM training target (eq. 8), D returns x0 exactly."""
    sd = 0.5
    gen = torch.Generator().manual_seed(1)
    sigma = torch.exp(torch.linspace(math.log(0.002), math.log(80), 12, dtype=F64))
    x0 = torch.randn(12, 2, 4, 4, generator=gen, dtype=F64)  # image-shaped
    x = x0 + append_dims(sigma, 4) * torch.randn(x0.shape, generator=gen, dtype=F64)

    class IdealF(nn.Module):
        def forward(self, x_in, c_noise, cond=None):
            s = append_dims((4 * c_noise).exp(), x_in.ndim)
            x_full = x_in * (s**2 + sd**2).sqrt()
            c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
            return (x0 - c_skip * x_full) / c_out

    torch.testing.assert_close(EDMPrecond(IdealF(), sd)(x, sigma), x0, rtol=1e-9, atol=1e-9)


def test_edm_precond_is_rank_agnostic():
    """The same wrapper on [N, d] points and on [N, C, H, W] images gives the same numbers."""
    net = Probe(0.3)
    sigma = torch.tensor([0.1, 2.0, 30.0], dtype=F64)
    images = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    flat = EDMPrecond(net, 0.5)(images.reshape(3, -1), sigma)
    torch.testing.assert_close(EDMPrecond(net, 0.5)(images, sigma).reshape(3, -1), flat)
    assert EDMPrecond(net, 0.5)(images, 0.7).shape == images.shape  # scalar sigma broadcasts


@pytest.mark.parametrize("per_sample_sigma", [False, True])
def test_score_from_denoiser_is_autograd_of_log_prob(per_sample_sigma):
    """(D(x, sigma) - x) / sigma^2 (Tweedie) equals grad_x log p(x; sigma) by autograd."""
    mixture = tree_mixture()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(200, 2, generator=gen, dtype=F64) * 1.2
    sigma = torch.exp(torch.empty(200, dtype=F64).uniform_(-4, 1, generator=gen)) if per_sample_sigma else 0.3
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.log_prob(x, sigma).sum(), x)
    score = score_from_denoiser(mixture(x.detach(), sigma), x.detach(), sigma)
    torch.testing.assert_close(score, grad, rtol=1e-7, atol=1e-7)


def test_clip_denoised_clamps_only_what_leaves_the_range(tree):
    """ClipDenoised returns the inner x0_hat where it lies in [low, high] (bit for bit) and the bound
    where it does not, per coordinate with tensor bounds, at any rank; a reversed range is an error."""
    x = torch.linspace(-400, 400, 41, dtype=F64)[:, None] * torch.tensor([1.0, -0.5], dtype=F64)
    sigma = torch.full((41,), 150.0, dtype=F64)
    wild = FunctionDenoiser(lambda x, sigma, cond: x / 10)  # x0_hat from -40 to 40, like a bad eps net
    low, high = torch.tensor([-2.2, -1.0], dtype=F64), torch.tensor([2.3, 1.5], dtype=F64)
    out = ClipDenoised(wild, low, high)(x, sigma)
    inner = x / 10
    expected = torch.minimum(torch.maximum(inner, low), high)  # elementwise, per coordinate
    assert torch.equal(out, expected) and out.dtype == F64
    inside = (inner >= low) & (inner <= high)
    assert bool(inside.any() and (~inside).any()) and torch.equal(out[inside], inner[inside])
    # the exact denoiser at small sigma stays in the tree's range: clipping to it changes nothing
    near = tree.sample(200, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(ClipDenoised(tree, -3.0, 3.0)(near, 0.05), tree(near, 0.05))
    # image-shaped data with per-channel bounds [C, 1, 1]
    images = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 3
    bounds = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    clipped = ClipDenoised(FunctionDenoiser(lambda x, sigma, cond: x), -bounds, bounds)(images, 1.0)
    assert clipped.dtype == torch.float32
    assert bool((clipped.abs() <= bounds).all()) and torch.equal(clipped, images.clamp(-bounds, bounds))
    with pytest.raises(ConfigError, match="low < high, got low=1.0, high=-1.0"):
        ClipDenoised(wild, 1.0, -1.0)
