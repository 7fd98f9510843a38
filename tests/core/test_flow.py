"""Rectified flow (`flow` process, velocity target, logit-normal t, SD3's shift) against independent answers.

The references: the flow marginal of a Gaussian mixture written out from x_t = (1 - t) x0 + t eps (a
mixture of N((1 - t) mu_k, (1 - t)^2 C_k + t^2 I)); its exact velocity E[eps - x0 | x_t] from Gaussian
conditioning, written here without diffguide's mixture code; diffusers' FlowMatchEulerDiscreteScheduler
loop; the logit-normal's defining moments.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad
from scipy.stats import multivariate_normal, norm
from torch.distributions import MultivariateNormal

from diffguide.cli import main
from diffguide.denoiser import ProcessPrecond
from diffguide.errors import ConfigError
from diffguide.grids import flow_shift_sigmas, make_sigmas
from diffguide.losses import DenoisingLoss, LossConfig
from diffguide.mixtures import tree_mixture
from diffguide.noise import PerSampleNoise
from diffguide.processes import FlowProcess, ProcessConfig, make_process, timestep_shift
from diffguide.samplers.registry import SAMPLER_SPECS

F64 = torch.float64
MIXTURE = tree_mixture(depth=3)


def flow_marginal_parts(t: float):
    """(weights, means, covs) of x_t = (1 - t) x0 + t eps for x0 ~ MIXTURE, written from the definition."""
    a = 1 - t
    eye = torch.eye(MIXTURE.dim, dtype=F64)
    return MIXTURE.weights, a * MIXTURE.means, a**2 * MIXTURE.covs + t**2 * eye


def exact_x0_given_xt(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] under the flow, by Gaussian conditioning in each component. x_t: [N, d], t: [N]."""
    a, b = (1 - t)[:, None, None], t[:, None, None]  # [N, 1, 1]
    eye = torch.eye(MIXTURE.dim, dtype=F64)
    logs, posts = [], []
    for w, mu, cov in zip(MIXTURE.weights, MIXTURE.means, MIXTURE.covs):
        marginal = a**2 * cov + b**2 * eye  # Cov(x_t | k): [N, d, d]
        gain = a * cov @ torch.linalg.inv(marginal)  # Cov(x0, x_t | k) Cov(x_t | k)^-1
        posts.append(mu + (gain @ (x_t - a[:, :, 0] * mu)[:, :, None])[:, :, 0])
        logs.append(torch.log(w) + MultivariateNormal(a[:, :, 0] * mu, marginal).log_prob(x_t))
    r = torch.softmax(torch.stack(logs), 0)  # [K, N]
    return (r[:, :, None] * torch.stack(posts)).sum(0)


class ExactVelocity(torch.nn.Module):
    """A perfect flow network: F(x_t, 1000 t) = E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t."""

    def forward(self, x_t, c_noise, cond=None):
        t = c_noise.to(F64) / 1000
        return (x_t - exact_x0_given_xt(x_t, t)) / t[:, None]


def test_flow_process_is_the_straight_line():
    """s(t) (x0 + sigma(t) eps) = (1 - t) x0 + t eps, and t_of_sigma inverts sigma."""
    process = FlowProcess()
    t = torch.linspace(process.t_min, process.t_max, 50, dtype=F64)
    x0, eps = torch.randn(2, 50, dtype=F64)
    torch.testing.assert_close(process.scale(t) * (x0 + process.sigma(t) * eps), (1 - t) * x0 + t * eps)
    torch.testing.assert_close(process.t_of_sigma(process.sigma(t)), t)
    assert process.sigma_min == pytest.approx(0.002) and process.sigma_max == pytest.approx(80.0)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.9])
def test_flow_marginal_of_a_mixture_is_closed_form(t):
    """diffguide's density of x_t (mixture at sigma(t), rescaled by s(t)) equals the closed form, and
    simulated x_t = (1 - t) x0 + t eps have its mean and covariance."""
    process = FlowProcess()
    s, sigma = float(process.scale(torch.tensor(t))), float(process.sigma(torch.tensor(t)))
    weights, means, covs = flow_marginal_parts(t)
    g = torch.Generator().manual_seed(0)
    x0 = MIXTURE.sample(200_000, generator=g)[0]
    x_t = (1 - t) * x0 + t * torch.randn(x0.shape, generator=g, dtype=F64)
    pts = x_t[:500]
    closed = torch.logsumexp(
        torch.stack(
            [
                math.log(float(w))
                + torch.as_tensor(multivariate_normal(m.numpy(), c.numpy()).logpdf(pts.numpy()))
                for w, m, c in zip(weights, means, covs)
            ]
        ),
        0,
    )
    ours = MIXTURE.log_prob(pts / s, sigma) - MIXTURE.dim * math.log(s)  # change of variables x_t = s x
    torch.testing.assert_close(ours, closed, rtol=0, atol=1e-5)
    mean = (weights[:, None] * means).sum(0)
    second = (weights[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    torch.testing.assert_close(x_t.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x_t.T), second - torch.outer(mean, mean), atol=0.01, rtol=0)


def test_exact_velocity_through_precond_is_the_exact_denoiser():
    """ProcessPrecond(net, flow, 'velocity') with the exact velocity net = the mixture's exact denoiser."""
    process = FlowProcess(shift=3.0)
    g = torch.Generator().manual_seed(1)
    sigma = process.sigma(torch.linspace(process.t_min, process.t_max, 12, dtype=F64))
    x = MIXTURE.sample(12, generator=g)[0] + sigma[:, None] * torch.randn(12, 2, generator=g, dtype=F64)
    denoiser = ProcessPrecond(ExactVelocity(), process, "velocity")
    torch.testing.assert_close(denoiser(x, sigma), MIXTURE(x, sigma), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", list(SAMPLER_SPECS))
def test_every_sampler_runs_a_flow_model_unchanged(name):
    """Every registered sampler, on the flow-shift grid, gives a flow velocity model the samples of the
    mixture's exact denoiser from the same per-sample noise (the denoiser is all a sampler sees)."""
    process = FlowProcess(shift=3.0)
    sigmas = make_sigmas("flow-shift", 5, process)
    flow = ProcessPrecond(ExactVelocity(), process, "velocity")

    def run(denoiser):
        noise = PerSampleNoise.from_seed(7, 6)
        x = noise.randn((2,), F64) * sigmas[0]
        return SAMPLER_SPECS[name].function(denoiser, x, sigmas, generator=noise)

    exact, ours = run(MIXTURE), run(flow)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, exact, rtol=1e-6, atol=1e-6)


def test_flow_shift_grid_is_sd3s_shift_of_a_uniform_grid():
    sigmas = flow_shift_sigmas(5, 0.01, 100.0, shift=3.0)
    t = sigmas[:-1] / (1 + sigmas[:-1])
    u = t / (3.0 - 2.0 * t)  # the inverse shift
    torch.testing.assert_close(u.diff(), torch.full((4,), float(u.diff()[0]), dtype=F64))  # evenly spaced
    assert float(sigmas[0]) == pytest.approx(100.0) and float(sigmas[-2]) == pytest.approx(0.01)
    assert float(sigmas[-1]) == 0
    torch.testing.assert_close(make_sigmas("flow-shift", 5, FlowProcess(0.01, 100.0, 3.0)), sigmas)
    with pytest.raises(ConfigError, match="shift=0"):
        flow_shift_sigmas(5, shift=0)


def diffusers_flow_sigmas(n: int, shift: float) -> torch.Tensor:
    """Our grid equal to FlowMatchEulerDiscreteScheduler.set_timesteps(n): its u runs from 1 (here
    sigma_max = 1e8, t = 1 - 1e-8: t = 1 is sigma = inf) to its sigma_min, shift(1/1000), so our u(sigma_min)
    must be that: t(sigma_min) = shift(shift(1/1000))."""
    t_min = float(timestep_shift(timestep_shift(torch.tensor(1e-3, dtype=F64), shift), shift))
    return flow_shift_sigmas(n, t_min / (1 - t_min), 1e8, shift)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_parity_with_diffusers_flow_match_euler(shift):
    """The same velocity model: diffusers' scheduler loop and our Euler sampler on the equal grid."""
    diffusers = pytest.importorskip("diffusers")
    steps, n = 10, 64
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    sigmas = diffusers_flow_sigmas(steps, shift)
    t_ours = sigmas / (1 + sigmas)
    torch.testing.assert_close(scheduler.sigmas.to(F64), t_ours, rtol=0, atol=1e-6)  # float32 table

    net = ExactVelocity()
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    x = noise.clone()  # diffusers starts at t = 1: x_1 = eps
    for timestep in scheduler.timesteps:
        v = net(x, timestep.to(F64).expand(n))
        x = scheduler.step(v, timestep, x).prev_sample
    process = FlowProcess(float(sigmas[-2]), 1e8, shift)
    ours = SAMPLER_SPECS["euler"].function(
        ProcessPrecond(net, process, "velocity"), noise * sigmas[0], sigmas
    )
    torch.testing.assert_close(ours, x.to(F64), rtol=0, atol=1e-6)  # measured: 2.3e-7
    assert float((ours - noise).abs().mean()) > 0.1  # the loop moved the points


@pytest.mark.parametrize(("mean", "std", "shift"), [(0.0, 1.0, 1.0), (-0.5, 0.7, 1.0), (0.0, 1.0, 3.0)])
def test_logit_normal_t_has_its_moments(mean, std, shift):
    """SD3's logit-normal: logit(u) ~ N(mean, std^2) with u the unshifted t; E[t] by quadrature."""
    process = FlowProcess(1e-9, 1e9, shift)
    loss = DenoisingLoss(
        LossConfig(target="velocity", noise_sampling="logit-normal", p_mean=mean, p_std=std), process
    )
    n = 200_000
    sigma = loss.sample_sigma(n, torch.Generator().manual_seed(0))
    t = sigma / (1 + sigma)
    u = t / (shift - (shift - 1) * t)
    logit = torch.log(u / (1 - u))
    assert float(logit.mean()) == pytest.approx(mean, abs=4 * std / math.sqrt(n))
    assert float(logit.std()) == pytest.approx(std, rel=0.01)
    expected_t, _ = quad(
        lambda z: (
            float(timestep_shift(torch.tensor(1 / (1 + math.exp(-(mean + std * z))), dtype=F64), shift))
            * norm.pdf(z)
        ),
        -12,
        12,
    )
    assert float(t.mean()) == pytest.approx(expected_t, abs=4 * float(t.std()) / math.sqrt(n))


def test_velocity_loss_is_the_velocity_mse():
    """The velocity target's loss is ||v_hat - (eps - x0)||^2 of the raw network on x_t = (1 - t) x0 + t eps."""
    process = FlowProcess()
    net = torch.nn.Linear(2, 2).double()
    model = lambda x_t, c_noise, cond=None: net(x_t) * (1 + c_noise[:, None] / 1000)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 2, generator=g, dtype=F64)
    eps = torch.randn(16, 2, generator=g, dtype=F64)
    t = torch.rand(16, generator=g, dtype=F64) * 0.98 + 0.01
    loss = DenoisingLoss(LossConfig(target="velocity"), process)
    ours = loss(ProcessPrecond(model, process, "velocity"), x0, noise=(t / (1 - t), eps))
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    with torch.no_grad():
        expected = ((model(x_t, 1000 * t) - (eps - x0)) ** 2).mean(1)
    torch.testing.assert_close(ours.double(), expected, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("shift", [0.0, -1.0, math.inf, math.nan])
def test_bad_shift_is_refused_naming_the_value(shift):
    with pytest.raises(ConfigError, match=f"shift={shift}"):
        make_process(ProcessConfig(name="flow", shift=shift))


@pytest.mark.parametrize(("value", "message"), [("0", "shift=0.0"), ("-2", "shift=-2.0"), ("inf", "got inf")])
def test_cli_refuses_a_bad_shift(value, message, capsys, tmp_path):
    code = main(
        [
            "train",
            "--preset",
            "tree-flow",
            "--out",
            str(tmp_path),
            "--set",
            f"diffusion.process.shift={value}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "diffguide train: error: " in err, err
    assert not any(tmp_path.iterdir())
