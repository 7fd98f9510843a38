"""Probability-flow likelihood against closed forms: Gaussian and Gaussian-mixture data with their
exact denoisers, Hutchinson's estimator against the exact trace, and the bits/dim convention."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from diffguide.metrics.likelihood import (
    bits_per_dim,
    dequantize,
    divergence_exact,
    divergence_hutchinson,
    log_likelihood,
    probes,
)
from diffguide.mixtures import GaussianMixture, eight_gaussians


def gaussian_nll_per_dim(mean, cov, x):
    """Closed form -log N(x; mean, cov) / d, averaged over x."""
    dist = torch.distributions.MultivariateNormal(torch.as_tensor(mean), torch.as_tensor(cov))
    return float(-dist.log_prob(x).mean() / x.shape[1])


@pytest.mark.parametrize("dim", [2, 5])
def test_gaussian_nll_matches_closed_form(dim):
    g = torch.Generator().manual_seed(dim)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.3
    cov = a @ a.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    mean = torch.randn(dim, generator=g, dtype=torch.float64) * 0.3
    gaussian = GaussianMixture([1.0], mean[None], cov[None])  # one component: its exact denoiser
    x, _ = gaussian.sample(64, generator=g)
    result = log_likelihood(gaussian, x, sigma_min=0.002, sigma_max=80.0)
    exact = gaussian_nll_per_dim(mean, cov, x)
    assert float(result.nats_per_dim.mean()) == pytest.approx(exact, rel=0.01)  # measured 2e-4
    # per point: the N(0, sigma_max^2) prior ignores the data mean, an O(|mean| |z| / sigma_max) error
    assert (result.log_prob - gaussian.log_prob(x)).abs().max() < 0.05


def test_mixture_nll_matches_exact_log_prob():
    mixture = GaussianMixture(
        [0.5, 0.3, 0.2],
        [[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]],
        [torch.eye(2) * 0.1, [[0.2, 0.05], [0.05, 0.1]], torch.eye(2) * 0.05],
    )
    x, _ = mixture.sample(64, generator=torch.Generator().manual_seed(0))
    result = log_likelihood(mixture, x, sigma_min=0.002, sigma_max=80.0, rtol=1e-5, atol=1e-5)
    exact = mixture.log_prob(x, 0.002)  # the ODE starts at sigma_min: exact target is p blurred by it
    error = result.log_prob - exact
    assert error.abs().max() < 0.02  # measured 7.6e-3 (the prior's mean offset, see above)
    assert abs(float(error.mean())) < 2e-3  # measured 1.7e-4
    assert result.nfe < 400


def test_centred_mixture_nll_per_point():
    mixture = eight_gaussians(radius=2.0, std=0.2)  # mean zero: the prior error vanishes
    x, _ = mixture.sample(48, generator=torch.Generator().manual_seed(1))
    result = log_likelihood(mixture, x, sigma_min=0.002, sigma_max=80.0)
    assert (result.log_prob - mixture.log_prob(x, 0.002)).abs().max() < 5e-3  # measured 1e-3
    assert (result.log_prob - mixture.log_prob(x, 0.0)).abs().max() < 5e-3  # sigma_min -> 0 limit


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 3, padding=1)
    ).double()


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind):
    net = small_net()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, exact = divergence_exact(net, x)  # [3], 32 backward passes
    k = 4000
    xs = x.repeat(k, 1, 1, 1)  # k probes per point, independent rows
    z = probes(xs.shape, kind, torch.Generator().manual_seed(1))
    _, estimates = divergence_hutchinson(net, xs, z)
    estimates = estimates.reshape(k, 3)
    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(k)
    assert ((mean - exact).abs() < 4 * stderr).all(), (mean, exact, stderr)
    # power: a probe with the wrong scale (E[z z^T] = I / 2, say) would be off by 5 standard errors
    assert (0.5 * exact.abs() > 5 * stderr).all(), (exact, stderr)


def test_rademacher_probe_has_identity_covariance():
    z = probes((20000, 3), "rademacher", torch.Generator().manual_seed(0))
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(z.T @ z / len(z), torch.eye(3, dtype=torch.float64), atol=0.03)


def test_hutchinson_likelihood_is_unbiased_on_average():
    mixture = eight_gaussians(radius=2.0, std=0.25)
    x, _ = mixture.sample(200, generator=torch.Generator().manual_seed(2))
    exact = log_likelihood(mixture, x, rtol=1e-4, atol=1e-4, divergence="exact")
    probe = log_likelihood(
        mixture, x, rtol=1e-4, atol=1e-4, divergence="hutchinson", generator=torch.Generator().manual_seed(3)
    )
    diff = probe.log_prob - exact.log_prob
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff)) + 1e-3


def test_bits_per_dim_of_a_uniform_byte_is_eight():
    # a density uniform over the dequantisation range [-1 - 1/255, 1 + 1/255] gives each of the
    # 256 levels probability 1/256: exactly 8 bits per dimension
    nats = math.log(2 + 2 / 255)
    assert bits_per_dim(nats) == pytest.approx(8.0, abs=1e-12)


def test_dequantize_stays_in_the_bin():
    levels = torch.randint(0, 256, (1000, 3)).double() / 127.5 - 1
    x = dequantize(levels, torch.Generator().manual_seed(0))
    assert (x - levels).abs().max() <= 1 / 255
    assert (x - levels).abs().max() > 0.9 / 255
    assert torch.allclose(torch.round((x + 1) * 127.5), torch.round((levels + 1) * 127.5))


def test_errors_name_the_problem():
    mixture = eight_gaussians()
    with pytest.raises(ValueError, match="sigma_min"):
        log_likelihood(mixture, torch.zeros(2, 2), sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="did you mean 'hutchinson'"):
        log_likelihood(mixture, torch.zeros(2, 2), divergence="hutchinsn")
    with pytest.raises(ValueError, match="did you mean 'rademacher'"):
        probes((2, 2), "rademacher2")


def test_cli_likelihood_on_a_tiny_run(cli_run, tmp_path, capsys):
    from diffguide.cli import likelihood as cli

    run_dir = cli_run  # conftest: `diffguide train --preset tiny`, shared by the session
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    out = tmp_path / "nll.json"
    args = parser.parse_args(["likelihood", str(run_dir), "--n", "32", "--rtol", "1e-3", "--atol", "1e-3"])
    args.out = str(out)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "nats/dim" in printed and "exact NLL" in printed
    result = json.loads(out.read_text())
    assert result["n"] == 32 and result["dim"] == 2 and math.isfinite(result["nats_per_dim"])
    # the true mixture's NLL is a lower bound on average for any model (Gibbs): a 60-step model is worse
    assert result["nats_per_dim"] > result["exact_nats_per_dim"] - 0.1
