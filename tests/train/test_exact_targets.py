"""Exact targets (diffusion.loss.exact_target): the loss against the data mixture's E[x0 | x], checked
against closed forms on a single Gaussian, the null label's unconditional target, the gradient variance
it removes, bit-equal resume with it on, and its refusal for data without a mixture."""

from __future__ import annotations

import pytest
import torch

from diffguide.config import apply_overrides, load_preset
from diffguide.data import make_dataset
from diffguide.errors import ConfigError
from diffguide.losses import DenoisingLoss, LossConfig
from diffguide.mixtures import GaussianMixture
from diffguide.models.build import build_denoiser, build_network
from diffguide.processes import EDMProcess, make_process
from diffguide.train import train
from diffguide.train.batches import draw_batch
from diffguide.train.loop import exact_denoiser
from tests.helpers import run_cli
from tests.train.test_training import SETS, assert_bit_equal, final_tensors, tiny_config

S0 = 0.7  # the data: one isotropic Gaussian N(0, S0^2 I) in 2D, whose posterior is Gaussian too


def single_gaussian() -> GaussianMixture:
    return GaussianMixture([1.0], [[0.0, 0.0]], [torch.eye(2) * S0**2])


def fixed_sigma_noise(n: int, sigma: float, seed: int):
    """x0 from the data, one noise level, eps: the draws a loss call takes (float32, as training)."""
    g = torch.Generator().manual_seed(seed)
    x0 = single_gaussian().sample(n, generator=g)[0].float()
    return x0, (torch.full((n,), sigma, dtype=torch.float64), torch.randn(n, 2, generator=g))


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_losses_of_a_linear_net_match_the_closed_forms(sigma):
    """For data N(0, s0^2 I) the exact denoiser is c x with c = s0^2 / (s0^2 + sigma^2), and x ~ N(0,
    (s0^2 + sigma^2) I). A net a x then has the exact-target loss (a - c)^2 (s0^2 + sigma^2) per
    coordinate (0 for a = c: the exact denoiser scores exactly 0), and the DSM loss adds the posterior
    variance s0^2 sigma^2 / (s0^2 + sigma^2), the irreducible part that exact targets remove."""
    mixture, cfg = single_gaussian(), LossConfig(target="x0")  # x0 target: weight 1 at every sigma
    x0, noise = fixed_sigma_noise(200_000, sigma, seed=1)
    c = S0**2 / (S0**2 + sigma**2)
    exact_loss = DenoisingLoss(cfg, EDMProcess(), exact=mixture)
    dsm_loss = DenoisingLoss(cfg, EDMProcess())
    assert torch.equal(exact_loss(mixture, x0, noise=noise), torch.zeros(len(x0)))  # exactly 0
    posterior_variance = S0**2 * sigma**2 / (S0**2 + sigma**2)
    dsm = dsm_loss(mixture, x0, noise=noise).double().mean().item()
    assert dsm == pytest.approx(posterior_variance, rel=0.01)  # Monte Carlo: 2e5 draws, ~0.2% std
    for a in (0.5, 1.2):

        def net(x, s, cond, a=a):
            return a * x

        expected = (a - c) ** 2 * (S0**2 + sigma**2)
        exact = exact_loss(net, x0, noise=noise).double().mean().item()
        assert exact == pytest.approx(expected, rel=0.01)
        dsm = dsm_loss(net, x0, noise=noise).double().mean().item()
        assert dsm == pytest.approx(expected + posterior_variance, rel=0.01)


def test_exact_target_is_class_conditional_and_unconditional_for_the_null_label():
    """Training's targets: the dataset's mixture given each sample's class, and for a label-dropped
    sample (the null class, num_classes) the unconditional mixture, which differs from both classes'."""
    cfg = tiny_config(["diffusion.loss.exact_target=true", "train.p_uncond=0.5"])
    dataset = make_dataset(cfg.data)
    exact = exact_denoiser(cfg, dataset, torch.device("cpu"))
    loss_fn = DenoisingLoss(cfg.diffusion.loss, make_process(cfg.diffusion.process), exact)
    g = torch.Generator().manual_seed(0)
    batch = draw_batch(dataset, loss_fn, g, 512, num_classes=dataset.num_classes, p_uncond=0.5)
    x = batch.x0 + batch.sigma.float()[:, None] * batch.eps
    target = loss_fn.exact_target(x, batch.sigma, batch.labels)
    null = batch.labels == dataset.num_classes
    assert 100 < int(null.sum()) < 412
    mixture = dataset.mixture
    unconditional = mixture(x, batch.sigma, None)
    assert torch.equal(target[null], unconditional[null])
    for cls in range(dataset.num_classes):
        rows = batch.labels == cls
        given = mixture(x, batch.sigma, torch.full((len(x),), cls))
        assert torch.equal(target[rows], given[rows])
        # at the larger noise levels the class matters: the null rows' target is not class cls's
        far = null & (batch.sigma > 0.3)
        assert (target[far] - given[far]).abs().max() > 0.05


def batch_gradient(net, denoiser, loss_fn, dataset, seed: int, batch_size: int) -> torch.Tensor:
    """The flattened gradient of one batch's mean loss (the batch drawn from `seed`)."""
    g = torch.Generator().manual_seed(seed)
    batch = draw_batch(dataset, loss_fn, g, batch_size, num_classes=dataset.num_classes, p_uncond=0.1)
    net.zero_grad()
    loss_fn(denoiser, batch.x0, batch.labels, noise=(batch.sigma, batch.eps)).mean().backward()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def test_exact_targets_lower_the_gradient_variance():
    """On a fixed network, the variance of the per-batch gradient over 24 seeds (same batches, same
    batch size 128) is lower with exact targets: measured 0.55-0.57 of DSM's for the demo expert's
    freshly initialised network and loss (log-normal noise levels, mean -2.3, std 1.5; three network
    seeds). The rest is the variance from drawing x0, sigma and eps, which exact targets keep. Both
    gradients have the same mean (the same minimiser): their means agree within the sampling error."""
    cfg = apply_overrides(load_preset("demo-expert"), ["diffusion.loss.exact_target=true"])
    dataset = make_dataset(cfg.data)
    torch.manual_seed(0)
    net = build_network(cfg, dataset)
    denoiser = build_denoiser(cfg, net)
    process = make_process(cfg.diffusion.process)
    exact = DenoisingLoss(cfg.diffusion.loss, process, exact_denoiser(cfg, dataset, torch.device("cpu")))
    dsm = DenoisingLoss(cfg.diffusion.loss, process)
    grads = {
        name: torch.stack([batch_gradient(net, denoiser, fn, dataset, seed, 128) for seed in range(24)])
        for name, fn in (("exact", exact), ("dsm", dsm))
    }
    variance = {name: float(g.var(0).sum()) for name, g in grads.items()}
    assert variance["exact"] < 0.75 * variance["dsm"], variance
    # the mean gradients agree to within the DSM mean's own standard error
    gap = float((grads["exact"].mean(0) - grads["dsm"].mean(0)).pow(2).sum())
    assert gap < 4 * variance["dsm"] / 24, (gap, variance)


def test_resume_with_exact_targets_is_bit_equal(tmp_path):
    """With exact targets on, stopping at step 20 and resuming ends bit-equal to an uninterrupted run;
    and the option changes training (the run differs from the same run with DSM targets)."""
    cfg = tiny_config(["diffusion.loss.exact_target=true"])
    whole, resumed, dsm = tmp_path / "whole", tmp_path / "resumed", tmp_path / "dsm"
    train(cfg, whole, progress=False)
    train(cfg, resumed, progress=False, stop_after=20)
    train(cfg, resumed, progress=False, resume=True)
    assert_bit_equal(final_tensors(resumed), final_tensors(whole))
    train(tiny_config(), dsm, progress=False)
    assert not torch.equal(final_tensors(dsm)["model.inp.weight"], final_tensors(whole)["model.inp.weight"])


def test_exact_targets_are_refused_for_data_without_a_mixture(tmp_path):
    """Sample-only data (moons) has no exact denoiser: one line, before the run folder exists."""
    sets = ["diffusion.loss.exact_target=true", "data.name=moons", "data.conditional=false"]
    cfg = apply_overrides(load_preset("tiny"), [*SETS, *sets])
    with pytest.raises(ConfigError, match="data.name='moons' has none"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_exact_targets_refusal_exits_2_through_the_cli(tmp_path):
    sets = [a for s in SETS for a in ("--set", s)]
    result = run_cli(
        "train", "--preset", "tiny", *sets, "--set", "data.name=moons", "--set", "data.conditional=false",
        "--set", "diffusion.loss.exact_target=true", "--out", str(tmp_path), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "diffguide train: error: diffusion.loss.exact_target=true needs data with an exact mixture "
        "(data.name=tree, 8gaussians, grid, or mixture with data.path); data.name='moons' has none"
    ), result.stderr
    assert not any(tmp_path.iterdir())
