"""The exact Gaussian mixture against scipy densities, autograd, quadrature and moment formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from diffguide.errors import ConfigError
from diffguide.mixtures import GaussianMixture, eight_gaussians, grid_mixture, make_mixture

F64 = torch.float64


def scipy_log_prob(mixture, x, sigma, keep=None) -> np.ndarray:
    """log sum_k w_k N(x; mu_k, C_k + sigma^2 I) with scipy, over components `keep` (renormalised)."""
    w = mixture.weights.numpy()
    keep = np.arange(len(w)) if keep is None else keep
    eye = np.eye(mixture.dim)
    terms = [
        np.log(w[k])
        + multivariate_normal(mixture.means[k].numpy(), mixture.covs[k].numpy() + sigma**2 * eye).logpdf(x)
        for k in keep
    ]
    return logsumexp(np.stack(terms, 1), axis=1) - np.log(w[keep].sum())


@pytest.fixture(scope="module")
def small_tree(tree):
    """A 40-component slice of the tree (both classes) for the scipy comparisons."""
    keep = torch.cat([torch.nonzero(tree.classes == c)[:20, 0] for c in (0, 1)])
    return tree.subset(keep)


@pytest.mark.parametrize("sigma", [0.0, 0.05, 1.0])
def test_log_prob_matches_scipy(small_tree, sigma):
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.8
    expected = scipy_log_prob(small_tree, x.numpy(), sigma)
    np.testing.assert_allclose(small_tree.log_prob(x, sigma).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_class_conditional_log_weights(small_tree):
    """p(x | c) is the mixture of class c's components with renormalised weights; p(x) = sum_c pi_c
    p(x | c) with pi_c the class's total weight; the null class (num_classes) is unconditional."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.8
    sigma = 0.1
    classes = small_tree.classes.numpy()
    total = torch.zeros(200, dtype=F64)
    for c in range(small_tree.num_classes):
        cond = torch.full((200,), c)
        logp = small_tree.log_prob(x, sigma, cond)
        np.testing.assert_allclose(
            logp.numpy(), scipy_log_prob(small_tree, x.numpy(), sigma, np.nonzero(classes == c)[0]), rtol=1e-9
        )
        total += small_tree.weights[small_tree.classes == c].sum() * logp.exp()
    np.testing.assert_allclose(total.log().numpy(), small_tree.log_prob(x, sigma).numpy(), rtol=1e-10)
    null = torch.full((200,), small_tree.num_classes)
    torch.testing.assert_close(small_tree.log_prob(x, sigma, null), small_tree.log_prob(x, sigma))
    torch.testing.assert_close(small_tree(x, sigma, null), small_tree(x, sigma))
    mixed = torch.tensor([0, 1, small_tree.num_classes]).repeat(67)[:200]  # per-sample conditions
    for c in (0, 1, small_tree.num_classes):
        rows = mixed == c
        full = torch.full((200,), c)
        torch.testing.assert_close(small_tree(x, sigma, mixed)[rows], small_tree(x, sigma, full)[rows])


def test_per_sample_sigmas_match_scipy_and_the_one_sigma_path(small_tree):
    """The per-sample path (one eigendecomposition of the covariances, as exact training targets use it)
    against scipy's densities row by row, and its denoiser against the one-sigma path's, with labels
    that include the null class."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(60, 2, generator=gen, dtype=F64) * 0.8
    sigma = torch.exp(torch.empty(60, dtype=F64).uniform_(-6, 1, generator=gen))
    labels = torch.tensor([0, 1, small_tree.num_classes]).repeat(20)
    expected = [scipy_log_prob(small_tree, x[[i, i]].numpy(), float(sigma[i]))[0] for i in range(60)]
    np.testing.assert_allclose(small_tree.log_prob(x, sigma).numpy(), expected, rtol=1e-9, atol=1e-9)
    one_sigma = torch.cat([small_tree(x[i : i + 1], sigma[i], labels[i : i + 1]) for i in range(60)])
    torch.testing.assert_close(small_tree(x, sigma, labels), one_sigma, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_sample_sigma", [False, True])
@pytest.mark.parametrize("cond", [None, 0, 1])
def test_score_is_autograd_of_log_prob(tree, per_sample_sigma, cond):
    """Both code paths (one sigma for the batch, and per-sample sigmas) against autograd."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(150, 2, generator=gen, dtype=F64) * 1.2).requires_grad_(True)
    sigma = (
        torch.exp(torch.empty(150, dtype=F64).uniform_(-5, 1, generator=gen)) if per_sample_sigma else 0.05
    )
    labels = None if cond is None else torch.full((150,), cond)
    (grad,) = torch.autograd.grad(tree.log_prob(x, sigma, labels).sum(), x)
    torch.testing.assert_close(tree.score(x.detach(), sigma, labels), grad, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("cond", [None, 1])
def test_rows_do_not_depend_on_the_batch(tree, cond):
    """Row i of the exact denoiser and of the score is the same bit for bit whether x_i is evaluated
    alone, in a batch of 7, or in one of 3000 (which crosses 512-row chunk boundaries): samples
    drawn with the exact denoiser then do not depend on the batch size."""
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    labels = None if cond is None else torch.full((3000,), cond)
    full_denoised, full_score = tree(x, 0.3, labels), tree.score(x, 0.3, labels)
    for rows in (slice(2999, 3000), slice(509, 516), slice(0, 1)):
        part = None if labels is None else labels[rows]
        assert torch.equal(tree(x[rows], 0.3, part), full_denoised[rows])
        assert torch.equal(tree.score(x[rows], 0.3, part), full_score[rows])


def test_denoiser_is_posterior_mean(small_tree):
    """E[x0 | x] = sum_k r_k(x) (mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k)): the Gaussian posterior
    means weighted by the responsibilities, computed here with numpy."""
    sigma = 0.2
    x = np.random.default_rng(0).normal(size=(100, 2)) * 0.8
    w, mu, cov = small_tree.weights.numpy(), small_tree.means.numpy(), small_tree.covs.numpy()
    dens = np.stack(
        [w[k] * multivariate_normal(mu[k], cov[k] + sigma**2 * np.eye(2)).pdf(x) for k in range(len(w))], 1
    )
    r = dens / dens.sum(1, keepdims=True)
    means = np.stack(
        [
            mu[k] + (cov[k] @ np.linalg.solve(cov[k] + sigma**2 * np.eye(2), (x - mu[k]).T)).T
            for k in range(len(w))
        ],
        1,
    )
    expected = (r[..., None] * means).sum(1)
    np.testing.assert_allclose(small_tree(torch.tensor(x), sigma).numpy(), expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        small_tree.responsibilities(torch.tensor(x), sigma).numpy(), r, rtol=1e-8, atol=1e-12
    )


def test_density_integrates_to_one(tree):
    """Riemann sum of exp(log p(x; 0.1)) over [-3, 3]^2 (the tree spans about [-2.2, 2.2]). With
    blurred widths >= 0.1 and a 0.025 grid the sum of a Gaussian is exact to far below 1e-6."""
    ax = torch.linspace(-3, 3, 241, dtype=F64)
    xx, yy = torch.meshgrid(ax, ax, indexing="xy")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    cell = float(ax[1] - ax[0]) ** 2
    assert float(tree.log_prob(points, 0.1).exp().sum()) * cell == pytest.approx(1.0, abs=1e-6)
    eight = eight_gaussians(std=0.15)
    for c in (0, 3):  # class-conditional densities integrate to one too
        mass = float(eight.log_prob(points, 0.1, torch.full((len(points),), c)).exp().sum()) * cell
        assert mass == pytest.approx(1.0, abs=1e-6)


def mixture_moments(mixture, sigma: float):
    """Mean and covariance of sum_k w_k N(mu_k, C_k + sigma^2 I)."""
    w, mu, cov = mixture.weights, mixture.means, mixture.covs
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None] + sigma**2 * torch.eye(mixture.dim, dtype=F64)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_sampling_matches_moments_and_weights(tree, sigma):
    n = 50_000
    x, comp = tree.sample(n, sigma, generator=torch.Generator().manual_seed(4))
    mean, cov = mixture_moments(tree, sigma)
    std = cov.diagonal().sqrt()
    assert float(((x.mean(0) - mean) / std).abs().max()) < 5 / math.sqrt(n)
    # Var of a sample covariance entry is at most (C_ii C_jj + C_ij^2) / n <= 2 C_ii C_jj / n
    emp_cov = torch.cov(x.T)
    assert float(((emp_cov - cov) / (std[:, None] * std[None])).abs().max()) < 5 * math.sqrt(2 / n)
    # component frequencies against the weights (binomial standard errors)
    freq = torch.bincount(comp, minlength=len(tree.weights)).double() / n
    se = (tree.weights * (1 - tree.weights) / n).sqrt()
    assert float(((freq - tree.weights) / se).abs().max()) < 5.0
    # and the samples have the density's mean log-likelihood: E_p[log p] computed by quadrature
    if sigma == 0.5:
        ax = torch.linspace(-5, 5, 201, dtype=F64)
        xx, yy = torch.meshgrid(ax, ax, indexing="xy")
        grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
        logp = tree.log_prob(grid, sigma)
        expected = float((logp.exp() * logp).sum()) * float(ax[1] - ax[0]) ** 2
        got = tree.log_prob(x[:20_000], sigma)
        assert float(got.mean()) == pytest.approx(expected, abs=5 * float(got.std()) / math.sqrt(20_000))


def test_class_conditional_sampling(tree):
    for c in (0, 1):
        x, comp = tree.sample(2000, cond=torch.full((2000,), c), generator=torch.Generator().manual_seed(c))
        assert (tree.classes[comp] == c).all()
    _, comp = tree.sample(20_000, cond=torch.full((20_000,), 2), generator=torch.Generator().manual_seed(5))
    share = float((tree.classes[comp] == 0).double().mean())  # null class: both, by their weights (1/2)
    assert share == pytest.approx(
        float(tree.weights[tree.classes == 0].sum()), abs=5 * 0.5 / math.sqrt(20_000)
    )


def test_mass_threshold_holds_the_mass():
    """For one isotropic Gaussian in 2D, log p >= tau holds mass 1 - exp(-r^2/2) with
    tau = -log(2 pi s^2) - r^2 / 2: the 99% level is at r^2 = -2 log(0.01)."""
    s = 0.3
    single = GaussianMixture([1.0], [[0.5, -1.0]], [np.eye(2) * s**2])
    expected = -math.log(2 * math.pi * s**2) + math.log(0.01)
    assert single.mass_threshold(0.99) == pytest.approx(expected, abs=0.03)


def test_builtin_mixtures_and_errors():
    assert make_mixture("grid", size=3).weights.shape == (9,)
    assert grid_mixture(4).means.mean(0).abs().max() < 1e-12  # centred
    assert eight_gaussians().num_classes == 8
    with pytest.raises(ConfigError, match="did you mean 'tree'"):
        make_mixture("trees")
    with pytest.raises(ConfigError, match="shapes disagree"):
        GaussianMixture([1.0, 1.0], [[0.0, 0.0]], [np.eye(2)])
    with pytest.raises(ConfigError, match="non-negative"):
        GaussianMixture([-1.0], [[0.0, 0.0]], [np.eye(2)])
