"""Loss weightings and noise-level sampling against their papers' closed forms.

Each expected value is written in the paper's own variables (DDPM's alpha_bar_t, EDM's c_skip, c_out,
c_in, lambda), computed here from x0 and eps, never through the library's sigma-space identities.
The native MSE of each target is checked in test_training.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from diffguide.denoiser import EDMPrecond, ProcessPrecond
from diffguide.losses import DenoisingLoss, LossConfig
from diffguide.processes import DDPM, VESDE, VPSDE, EDMProcess

F64 = torch.float64


class LinearNet(nn.Module):
    """A fixed, arbitrary network output: a linear map of (input, noise input)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(3, 2).double()

    def forward(self, x, c_noise, cond=None):
        return self.lin(torch.cat([x, c_noise[:, None].to(x.dtype)], 1))


def ddpm_batch(n: int = 64):
    """x0, eps, integer timesteps t (0 .. 999, both ends included) and Ho et al.'s alpha_bar_t there,
    from linear betas 1e-4 .. 0.02 computed with numpy."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, 2, generator=gen, dtype=F64)
    eps = torch.randn(n, 2, generator=gen, dtype=F64)
    t = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (n - 2,), generator=gen)])
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))[t]
    return x0, eps, t, abar[:, None]


def textbook_predictions(target: str, out, x_t, abar):
    """(eps_hat, x0_hat, v_hat) from a DDPM network's output: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps,
    v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)."""
    a, b = abar.sqrt(), (1 - abar).sqrt()
    if target == "eps":
        eps_hat = out
        x0_hat = (x_t - b * eps_hat) / a
    elif target == "x0":
        x0_hat = out
        eps_hat = (x_t - a * x0_hat) / b
    else:
        x0_hat, eps_hat = a * x_t - b * out, b * x_t + a * out
    return eps_hat, x0_hat, a * eps_hat - b * x0_hat


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["min-snr", "snr"])
def test_snr_weightings_match_hang_et_al(target, weighting):
    """Hang et al. 2023 ("Efficient diffusion training via min-SNR weighting"), with SNR = alpha_bar /
    (1 - alpha_bar): min-SNR-gamma is min(SNR, gamma) / SNR times the eps loss, min(SNR, gamma) times
    the x0 loss and min(SNR, gamma) / (SNR + 1) times the v loss. 'snr' weighting is the eps loss
    (DDPM's L_simple) whatever the network predicts. Checked at all noise levels of a DDPM, where SNR
    runs from 1e4 (t = 0) to 4e-5 (t = 999), so gamma = 3 (not the default 5) clips t < 165."""
    x0, eps, t, abar = ddpm_batch()
    process, net, gamma = DDPM(), LinearNet(), 3.0
    loss_fn = DenoisingLoss(LossConfig(target=target, weighting=weighting, min_snr_gamma=gamma), process)
    sigma = ((1 - abar) / abar).sqrt()[:, 0]  # the loss's scale-free noise level
    loss = loss_fn(ProcessPrecond(net, process, target), x0, noise=(sigma, eps))

    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    with torch.no_grad():
        out = net(x_t, t.to(F64))  # DDPM tells its network the timestep
    eps_hat, x0_hat, v_hat = textbook_predictions(target, out, x_t, abar)
    snr = (abar / (1 - abar))[:, 0]
    eps_mse = ((eps_hat - eps) ** 2).mean(1)
    if weighting == "snr":
        expected = eps_mse
    else:
        x0_mse = ((x0_hat - x0) ** 2).mean(1)
        v_mse = ((v_hat - (abar.sqrt() * eps - (1 - abar).sqrt() * x0)) ** 2).mean(1)
        clipped = snr.clamp(max=gamma)
        expected = {"eps": clipped / snr * eps_mse, "x0": clipped * x0_mse, "v": clipped / (snr + 1) * v_mse}
        expected = expected[target]
        assert bool((snr > gamma).any() and (snr < gamma).any())  # both sides of the clip are tested
    # the loss squares its x0-space error in float32, hence float32-level tolerances
    torch.testing.assert_close(loss.double(), expected, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("sigma_data", [0.5, 0.8])
def test_edm_loss_is_karras_eq_8(sigma_data):
    """Karras et al. 2022, eq. 8 with Table 1: lambda(sigma) ||D(x; sigma) - x0||^2, lambda = (sigma^2 +
    sd^2) / (sigma sd)^2 = 1 / c_out^2, equals the raw network's ||F(c_in x; c_noise) - F_target||^2 with
    F_target = (x0 - c_skip x) / c_out. 'edm' weighting applies the same lambda to any denoiser."""
    gen = torch.Generator().manual_seed(2)
    n = 64
    x0 = torch.randn(n, 2, generator=gen, dtype=F64)
    eps = torch.randn(n, 2, generator=gen, dtype=F64)
    sigma = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), n, dtype=F64))
    net = LinearNet()
    denoiser = EDMPrecond(net, sigma_data)
    cfg = LossConfig(target="edm", weighting="native", sigma_data=sigma_data)
    loss = DenoisingLoss(cfg, EDMProcess())(denoiser, x0, noise=(sigma, eps))

    s, sd = sigma[:, None], sigma_data
    x = x0 + s * eps
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), sigma.log() / 4
    with torch.no_grad():
        raw = net(c_in * x, c_noise)
        denoised = denoiser(x, sigma)
    f_target = (x0 - c_skip * x) / c_out
    lam = (s**2 + sd**2) / (s * sd) ** 2
    torch.testing.assert_close(loss.double(), ((raw - f_target) ** 2).mean(1), rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(loss.double(), (lam * (denoised - x0) ** 2).mean(1), rtol=2e-4, atol=1e-7)
    # the same lambda as an explicit weighting of another target's denoiser
    cfg_other = LossConfig(target="x0", weighting="edm", sigma_data=sigma_data)
    other = DenoisingLoss(cfg_other, EDMProcess())(denoiser, x0, noise=(sigma, eps))
    torch.testing.assert_close(other, loss)


def test_log_normal_noise_levels():
    """EDM training noise: ln sigma ~ N(P_mean, P_std^2). With n = 200k draws the sample mean has standard
    error P_std / sqrt(n) = 0.0016 and the sample std P_std / sqrt(2 n) = 0.0011; both must lie within
    5 of them, and the Kolmogorov-Smirnov distance to the normal CDF below 1.95 / sqrt(n) (p = 0.001).
    Non-default P_mean, P_std so that the configured values are the ones used."""
    p_mean, p_std, n = -0.4, 0.7, 200_000
    cfg = LossConfig(noise_sampling="log-normal", p_mean=p_mean, p_std=p_std)
    sigma = DenoisingLoss(cfg, EDMProcess()).sample_sigma(n, torch.Generator().manual_seed(3))
    assert sigma.dtype == F64 and sigma.shape == (n,)
    log_sigma = sigma.log()
    assert abs(float(log_sigma.mean()) - p_mean) < 5 * p_std / math.sqrt(n)
    assert abs(float(log_sigma.std()) - p_std) < 5 * p_std / math.sqrt(2 * n)
    assert stats.kstest(log_sigma.numpy(), "norm", args=(p_mean, p_std)).statistic < 1.95 / math.sqrt(n)


@pytest.mark.parametrize("process", [VPSDE(), VESDE(), EDMProcess()], ids=["vp", "ve", "edm"])
def test_uniform_t_noise_levels_are_uniform_in_t(process):
    """Uniform-t sampling: mapped back through the process's t(sigma), the training noise levels are
    U(t_min, t_max): Kolmogorov-Smirnov distance below 1.95 / sqrt(n) (p = 0.001), range inside."""
    n = 100_000
    loss_fn = DenoisingLoss(LossConfig(noise_sampling="uniform-t"), process)
    t = process.t_of_sigma(loss_fn.sample_sigma(n, torch.Generator().manual_seed(4))).numpy()
    assert process.t_min <= t.min() and t.max() <= process.t_max
    width = process.t_max - process.t_min
    assert stats.kstest(t, "uniform", args=(process.t_min, width)).statistic < 1.95 / math.sqrt(n)


def test_uniform_t_on_ddpm_draws_each_timestep_equally():
    """DDPM's uniform t is uniform over the integer timesteps 0 .. T-1: every sigma is one of the
    table's, and the counts pass a chi-square test against equal frequencies (p > 0.001)."""
    process, n = DDPM(T=200), 100_000
    sigma = DenoisingLoss(LossConfig(noise_sampling="uniform-t"), process).sample_sigma(
        n, torch.Generator().manual_seed(5)
    )
    index = (sigma.log()[:, None] - process.sigmas.log()[None]).abs().argmin(1)  # nearest table entry
    torch.testing.assert_close(process.sigmas[index], sigma, rtol=1e-12, atol=0)  # on the table
    counts = torch.bincount(index, minlength=process.T).numpy()
    assert counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-3
