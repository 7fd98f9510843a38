"""Noise processes against their defining equations: simulated forward processes, round trips,
quadrature of the VP-SDE, the DDPM Markov chain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from diffguide.errors import ConfigError
from diffguide.processes import (
    DDPM,
    PROCESSES,
    VESDE,
    VPSDE,
    EDMProcess,
    ProcessConfig,
    VESDESeed,
    make_process,
)

F64 = torch.float64


def t_grid(process, n: int = 201) -> torch.Tensor:
    t = torch.linspace(process.t_min, process.t_max, n, dtype=F64)
    if process.discrete:  # integer timesteps and points between them
        t = torch.cat([torch.arange(process.T, dtype=F64), t])
    return t


@pytest.mark.parametrize("name", list(PROCESSES))
def test_t_of_sigma_inverts_sigma(name):
    process = PROCESSES[name]()
    t = t_grid(process)
    sigma = process.sigma(t)
    assert (process.sigma(t.unique()).diff() > 0).all()  # strictly increasing in t
    torch.testing.assert_close(process.t_of_sigma(sigma), t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(process.sigma(process.t_of_sigma(sigma)), sigma, rtol=1e-9, atol=0)
    # the documented range: sigma(t_min) and sigma(t_max) are sigma_min and sigma_max
    assert process.sigma_min == pytest.approx(float(sigma[t.argmin()]))
    assert process.sigma_max == pytest.approx(float(sigma[t.argmax()]))


@pytest.mark.parametrize("name", ["ddpm", "vp"])
def test_variance_preserving(name):
    """VP processes keep unit-variance data at unit variance: s(t)^2 (1 + sigma(t)^2) = 1."""
    process = PROCESSES[name]()
    t = t_grid(process)
    torch.testing.assert_close(process.scale(t) ** 2 * (1 + process.sigma(t) ** 2), torch.ones_like(t))


def test_vp_sde_scale_is_integral_of_beta():
    """Song et al. 2021: s(t) = exp(-1/2 int_0^t beta(u) du), beta linear from beta_min to beta_max."""
    process = VPSDE(beta_min=0.1, beta_max=20.0)
    for t in (1e-3, 0.1, 0.5, 0.9, 1.0):
        integral, _ = quad(lambda u: 0.1 + u * (20.0 - 0.1), 0.0, t)
        assert float(process.scale(torch.tensor(t, dtype=F64))) == pytest.approx(
            math.exp(-0.5 * integral), rel=1e-12
        )


def test_ve_and_edm_ranges():
    ve = VESDE(0.01, 50.0)
    assert ve.sigma_min == pytest.approx(0.01) and ve.sigma_max == pytest.approx(50.0)
    t = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(
        ve.sigma(t).log().diff(), torch.full((10,), math.log(5000) / 10, dtype=F64)
    )  # geometric
    edm = EDMProcess(0.002, 80.0)
    torch.testing.assert_close(edm.sigma(t), t)
    torch.testing.assert_close(edm.scale(t), torch.ones_like(t))


# ---------------------------------------------------------------------------------------------
# VE SDE of the score-SDE tutorial: dx = sigma^t dw


def test_ve_seed_marginal_std_matches_simulated_sde():
    """Euler-Maruyama on dx = 25^t dw from x(0) = 0 (20k paths, 2000 steps) has std
    sqrt((25^(2t) - 1) / (2 ln 25)) at every t: the process's sigma(t)."""
    process = VESDESeed(25.0)
    n, steps = 20_000, 2000
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(n, dtype=F64)
    dt = 1.0 / steps
    checkpoints = {250: None, 500: None, 1000: None, 2000: None}
    for k in range(steps):
        t_mid = (k + 0.5) * dt  # midpoint g: the variance increment is then exact to O(dt^2)
        x = x + 25.0**t_mid * math.sqrt(dt) * torch.randn(n, generator=gen, dtype=F64)
        if k + 1 in checkpoints:
            checkpoints[k + 1] = float(x.std())
    for k, std in checkpoints.items():
        t = k * dt
        closed = math.sqrt((25.0 ** (2 * t) - 1) / (2 * math.log(25.0)))
        assert float(process.sigma(torch.tensor(t, dtype=F64))) == pytest.approx(closed, rel=1e-12)
        # relative standard error of a std from n normal draws: 1/sqrt(2n) = 0.5%; allow 4 of them
        assert std == pytest.approx(closed, rel=4 / math.sqrt(2 * n)), (t, std, closed)


def test_ve_seed_diffusion_is_derivative_of_variance():
    """g(t)^2 = d sigma(t)^2 / dt (the forward SDE's variance grows at the rate g^2)."""
    process = VESDESeed(25.0)
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    h = 1e-6
    derivative = (process.sigma(t + h) ** 2 - process.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(derivative, process.diffusion(t) ** 2, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# DDPM (Ho et al. 2020)


def test_ddpm_linear_betas():
    process = DDPM(T=1000, schedule="linear")
    betas = process.betas.numpy()
    assert betas[0] == pytest.approx(1e-4, rel=1e-12) and betas[-1] == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_ddpm_cosine_alpha_bar():
    """Nichol & Dhariwal 2021, eq. 17: abar_t = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) pi/2)."""
    process = DDPM(T=1000, schedule="cosine")
    steps = np.arange(1, 1001) / 1000
    f = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(
        process.alpha_bar.numpy()[:-5], f[:-5], rtol=1e-9
    )  # the last betas are clipped


def test_ddpm_forward_marginal_matches_markov_chain():
    """Simulate x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z step by step from x0 (the definition)
    and compare with q(x_t | x0) = N(sqrt(abar_t) x0, 1 - abar_t), in the process's own terms:
    mean s(t) x0 and std s(t) sigma(t). Also the chain's exact moment recursion (no sampling)."""
    process = DDPM()
    betas = np.linspace(1e-4, 0.02, 1000)  # Ho et al.'s schedule, independently of the process
    n = 20_000
    x0 = torch.tensor([1.5, -0.5], dtype=F64).repeat(n // 2)  # two starting points
    gen = torch.Generator().manual_seed(0)
    x = x0.clone()
    mean, var = x0[:2].clone(), torch.zeros(2, dtype=F64)  # exact recursion of the chain's moments
    for k, beta in enumerate(betas):  # chain step k + 1 of Ho et al. is the process's timestep t = k
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(n, generator=gen, dtype=F64)
        mean, var = math.sqrt(1 - beta) * mean, (1 - beta) * var + beta
        if k in (0, 9, 99, 499, 999):
            t = torch.tensor(float(k), dtype=F64)
            s, std = float(process.scale(t)), float(process.marginal_std(t))
            torch.testing.assert_close(mean, s * x0[:2], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(var.sqrt(), torch.full_like(var, std), rtol=1e-10, atol=0)
            for j in range(2):
                sample = x[j::2]
                assert float(sample.mean()) == pytest.approx(s * float(x0[j]), abs=5 * std / math.sqrt(n / 2))
                assert float(sample.std()) == pytest.approx(std, rel=5 / math.sqrt(n))


def test_ddpm_uniform_t_grid_uses_integer_timesteps():
    """DDIM's even timesteps: n integer timesteps spread over 0..T-1, then a final 0."""
    process = DDPM()
    sigmas = process.uniform_t_sigmas(50)
    timesteps = np.round(np.linspace(999, 0, 50)).astype(int)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(
        sigmas[:-1].numpy(), np.sqrt((1 - abar[timesteps]) / abar[timesteps]), rtol=1e-10
    )
    assert float(sigmas[-1]) == 0.0
    with pytest.raises(ConfigError, match="1001"):
        process.uniform_t_sigmas(1001)


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        (ProcessConfig(name="ddpm", T=1), "T=1"),
        (ProcessConfig(name="ddpm", beta_start=0.3, beta_end=0.2), "0.3"),
        (ProcessConfig(name="ve", sigma_min=5.0, sigma_max=1.0), "sigma_min=5.0"),
        (ProcessConfig(name="edm", sigma_min=100.0), "sigma_min=100.0"),
        (ProcessConfig(name="ve-seed", sigma=0.5), "sigma=0.5"),
        (ProcessConfig(name="vp", beta_min=30.0), "30.0"),
        (ProcessConfig(name="vpsde"), "did you mean 'vp'"),
    ],
)
def test_bad_process_parameters_are_named(cfg, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_process(cfg)
