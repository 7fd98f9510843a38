"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, section 4.3 and appendix D).

In scale-free coordinates the probability-flow ODE is dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma
(Karras et al. 2022, eq. 3 with sigma(t) = t). Along a solution the instantaneous change of variables
(Chen et al. 2018) gives d/dsigma log p_sigma(x(sigma)) = -div f(x(sigma), sigma), hence

    log p_{sigma_min}(x0) = log p_{sigma_max}(x(sigma_max)) + int_{sigma_min}^{sigma_max} div f dsigma,

where x(sigma) is the solution started at x(sigma_min) = x0 and integrated *up* to sigma_max. We
integrate in u = log sigma (the same integral, better conditioned): dx/du = x - D and
div f dsigma = (d - div D) du. Two approximations, both standard:

- the prior: p_{sigma_max} = p_data * N(0, sigma_max^2 I) is replaced by N(0, sigma_max^2 I); the error
  is O(E|x0|^2 / sigma_max^2) nats;
- the start: the ODE starts at the data point itself, so the result is log p_{sigma_min}(x0), the
  density of the data blurred by N(0, sigma_min^2 I) at x0, which tends to log p_0(x0) as
  sigma_min -> 0 (a model is not trained below its process's sigma_min, so we stop there).

The divergence div D is exact (one backward pass per dimension; the default up to 16 dimensions) or
Hutchinson's estimator z^T (dD/dx) z (Hutchinson 1989; Grathwohl et al. 2019) with a Rademacher or
Gaussian probe z drawn once per sample and kept for the whole solve, so the integrand stays smooth
for the adaptive solver and the integral is unbiased over the probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffguide.denoiser import batch_sigma
from diffguide.errors import ConfigError, lookup
from diffguide.samplers.generation import check_sample_count

PROBES = ("rademacher", "gaussian")
DIVERGENCES = ("auto", "exact", "hutchinson")
EXACT_MAX_DIM = 16  # "auto" uses the exact divergence up to this many dimensions per sample
SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")  # scipy.integrate.solve_ivp's methods


def check_solver_options(
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> None:
    """Refuse, before any work, the values that hang or mislead the ODE solve (a NaN tolerance or an
    infinite sigma_max never finishes). sigma_min/sigma_max None: the process's, checked later."""
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ConfigError(f"rtol (the solver's relative tolerance) must be a number in (0, 1), got {rtol}")
    if not (isinstance(atol, (int, float)) and 0 < atol < math.inf):
        raise ConfigError(f"atol (the solver's absolute tolerance) must be a finite number > 0, got {atol}")
    if isinstance(method, str):  # solve_ivp also takes an OdeSolver class
        lookup("solve_ivp method", method, dict.fromkeys(SOLVERS))
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(f"{name} must be a finite number > 0, got {value}")
    if sigma_min is not None and sigma_max is not None and not sigma_min < sigma_max:
        raise ConfigError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


@dataclass
class LikelihoodResult:
    """Per-sample results of `log_likelihood` (all [N] float64, nats)."""

    log_prob: torch.Tensor  # log p_{sigma_min}(x0)
    prior_log_prob: torch.Tensor  # log N(x(sigma_max); 0, sigma_max^2 I)
    delta_log_prob: torch.Tensor  # int div f dsigma
    dim: int
    nfe: int  # denoiser evaluations taken by the ODE solver (each with its divergence)

    @property
    def nats_per_dim(self) -> torch.Tensor:
        return -self.log_prob / self.dim


def probes(shape, kind: str = "rademacher", generator: torch.Generator | None = None, dtype=torch.float64):
    """Hutchinson probes with E[z z^T] = I: Rademacher (+-1) or standard Gaussian."""
    lookup("Hutchinson probe", kind, dict.fromkeys(PROBES))
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


def divergence_exact(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), div fn(x) [N]) by autograd, one backward pass per dimension; fn acts per sample."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        flat = out.reshape(out.shape[0], -1)
        div = torch.zeros(x.shape[0], dtype=flat.dtype, device=x.device)
        dims = flat.shape[1]
        for i in range(dims):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < dims)
            div = div + grad.reshape(x.shape[0], -1)[:, i]
    return out.detach(), div.detach()


def divergence_hutchinson(fn, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), z^T (d fn / dx) z [N]): Hutchinson's unbiased estimate of div fn for E[z z^T] = I."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        (vjp,) = torch.autograd.grad(out, x, grad_outputs=z.to(out.dtype))
    return out.detach(), (vjp * z.to(vjp.dtype)).reshape(x.shape[0], -1).sum(1).detach()


def gaussian_log_prob(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; 0, sigma^2 I) per sample [N]."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    d = flat.shape[1]
    return -0.5 * (flat.pow(2).sum(1) / sigma**2 + d * math.log(2 * math.pi * sigma**2))


def _module_dtype(denoiser) -> torch.dtype:
    params = getattr(denoiser, "parameters", None)
    first = next(iter(params()), None) if params is not None else None
    return first.dtype if first is not None and first.is_floating_point() else torch.float64


def log_likelihood(
    denoiser,
    x0: torch.Tensor,
    *,
    cond=None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "auto",
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    method: str = "RK45",
    dtype: torch.dtype | None = None,
    callback=None,
) -> LikelihoodResult:
    """log p_{sigma_min}(x0) per sample by the probability-flow ODE (Song et al. 2021, appendix D).

    x0: [N, ...]; one adaptive solve (scipy.integrate.solve_ivp, `method` with rtol/atol) for the
    whole batch in u = log sigma from log sigma_min to log sigma_max. divergence: "exact", "hutchinson"
    (probe "rademacher" or "gaussian", drawn once per sample from `generator`) or "auto" (exact up to
    16 dimensions per sample). See the module docstring for the derivation and the approximations.
    callback: called with {"sigma", "nfe"} at each evaluation of the ODE's right-hand side (progress).
    """
    from scipy.integrate import solve_ivp

    lookup("divergence", divergence, dict.fromkeys(DIVERGENCES))
    check_solver_options(rtol, atol, method, sigma_min, sigma_max)
    if x0.ndim < 2 or x0.shape[0] < 1:
        raise ConfigError(f"x0 must be a batch [N, ...] with N >= 1, got shape {tuple(x0.shape)}")
    dtype = dtype or _module_dtype(denoiser)
    device = x0.device
    n, shape = x0.shape[0], tuple(x0.shape[1:])
    d = int(np.prod(shape))
    if divergence == "auto":
        divergence = "exact" if d <= EXACT_MAX_DIM else "hutchinson"
    z = probes(x0.shape, probe, generator).to(device) if divergence == "hutchinson" else None
    nfe = 0

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        sigma = math.exp(u)
        if callback is not None:
            callback({"sigma": sigma, "nfe": nfe})
        x = torch.from_numpy(y[: n * d]).reshape(n, *shape).to(device=device, dtype=dtype)
        s = batch_sigma(sigma, x)

        def denoise(x):
            return denoiser(x, s, cond)

        if divergence == "exact":
            denoised, div_denoiser = divergence_exact(denoise, x)
        else:
            denoised, div_denoiser = divergence_hutchinson(denoise, x, z)
        # dx/du = sigma dx/dsigma = x - D; sigma div f = div(x - D) = d - div D (d exact, not probed)
        dx = x - denoised
        ddelta = d - div_denoiser
        return np.concatenate([dx.reshape(-1).double().cpu().numpy(), ddelta.double().cpu().numpy()])

    y0 = np.concatenate([x0.reshape(-1).double().cpu().numpy(), np.zeros(n)])
    solution = solve_ivp(
        rhs, (math.log(sigma_min), math.log(sigma_max)), y0, method=method, rtol=rtol, atol=atol
    )
    if not solution.success:
        raise ConfigError(
            f"the probability-flow ODE solve failed: {solution.message} (try a looser rtol/atol)"
        )
    y = torch.from_numpy(solution.y[:, -1])
    x_end = y[: n * d].reshape(n, *shape)
    delta = y[n * d :]
    prior = gaussian_log_prob(x_end, sigma_max)
    return LikelihoodResult(prior + delta, prior, delta, d, nfe)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None, levels: int = 256, data_range=2.0):
    """Uniform dequantisation of `levels`-level data: x + U(-1/2, 1/2) * bin, bin = data_range / (levels - 1).

    For 8-bit images in [-1, 1] the levels are x_k = 2 k / 255 - 1, each bin [x_k - 1/255, x_k + 1/255].
    """
    bin_width = data_range / (levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    return x + ((u - 0.5) * bin_width).to(x.dtype)


def bits_per_dim(nats_per_dim, levels: int = 256, data_range: float = 2.0):
    """Discrete bits/dim bound from the density of dequantised data (Theis et al. 2016; Ho et al. 2020).

    -log2 P(x_k) <= -log2 p(x_k + u) - log2(bin) per dim, bin = data_range / (levels - 1): for 8-bit
    images in [-1, 1], bits/dim = nats/dim / ln 2 + log2(127.5).
    """
    return nats_per_dim / math.log(2) + math.log2((levels - 1) / data_range)


def _check_run_options(run, n: int, batch_size: int, conditional: bool) -> None:
    if n < 1:
        raise ConfigError(f"number of data points must be >= 1, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if conditional and not run.num_classes:
        raise ConfigError(
            f"conditional=True (--conditional) needs a class-conditional run; run {run.config.name!r} is "
            + ("conditioned on attributes, not classes" if run.config.data.conditional else "unconditional")
        )


def _batched_log_prob(denoiser, x0, labels, batch_size: int, ends: dict, generator, callback, options):
    """(log p of every row of x0, total ODE evaluations): log_likelihood batch by batch; the callback
    gets each evaluation's dict with the batch's "start", "size", "n" and the integral's `ends`."""
    device = next(denoiser.parameters()).device
    log_probs, nfe = [], 0
    for start in range(0, len(x0), batch_size):
        xb = x0[start : start + batch_size].to(device)
        cond = None if labels is None else labels[start : start + batch_size].to(device)
        where = {"start": start, "size": len(xb), "n": len(x0), **ends}
        result = log_likelihood(
            denoiser, xb, cond=cond, **ends, generator=generator,
            callback=None if callback is None else (lambda info, where=where: callback({**info, **where})),
            **options,
        )  # fmt: skip
        log_probs.append(result.log_prob)
        nfe += result.nfe
    return torch.cat(log_probs), nfe


def run_likelihood(
    run,
    n: int = 1000,
    *,
    seed: int = 0,
    batch_size: int = 1000,
    conditional: bool = False,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    callback=None,
    **options,
) -> dict:
    """NLL of a loaded run's model on n fresh data draws, in nats/dim (and bits/dim for images).

    Data: for image sets, their held-out images (digits, MNIST, CryptoPunks, image folders: at most
    all of them, without replacement); for 2D sets, run.dataset.sample_batch with a generator seeded
    away from the training stream: new data for the analytic and generated sets, the training points
    themselves for fixed point clouds (no split there, so the number is a training-set NLL).
    sigma_min/sigma_max default to the run's process range. For data with an exact mixture the exact
    NLL of the same points is reported too. options go to `log_likelihood`. callback: called at
    each ODE evaluation with {"sigma", "nfe", "start", "size", "n", "sigma_min", "sigma_max"} (the
    batch's first point and size, the number of points and the integral's ends): a progress bar.
    """
    _check_run_options(run, n, batch_size, conditional)
    sigma_min = run.process.sigma_min if sigma_min is None else sigma_min
    sigma_max = run.process.sigma_max if sigma_max is None else sigma_max
    check_solver_options(sigma_min=sigma_min, sigma_max=sigma_max)  # the rest: by log_likelihood
    check_sample_count(n, run.dataset.shape, torch.float64)
    # not the training stream (train.seed); any integer seed (the same numbers below 2**62)
    data_gen = torch.Generator().manual_seed((2**40 + int(seed)) % (2**63 - 1))
    probe_gen = torch.Generator().manual_seed((2**41 + int(seed)) % (2**63 - 1))
    # image sets with a held-out split: those images (at most all of them), never seen in training
    heldout = len(getattr(run.dataset, "test_index", ())) > 0
    if heldout:
        x0, labels = run.dataset.heldout_batch(n, data_gen)
        n = len(x0)
    else:
        x0, labels = run.dataset.sample_batch(n, data_gen)
    images = getattr(run.dataset, "kind", "points") == "images"
    if images:
        x0 = dequantize(x0, data_gen)
    labels = labels if conditional else None
    ends = {"sigma_min": sigma_min, "sigma_max": sigma_max}
    log_prob, nfe = _batched_log_prob(
        run.denoiser, x0, labels, batch_size, ends, probe_gen, callback, options
    )
    d = int(np.prod(x0.shape[1:]))
    nats = -log_prob / d
    out = {
        "n": n,
        "data": "held-out" if heldout else "fresh draws of the training distribution",
        "dim": d,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "nats_per_dim": float(nats.mean()),
        "nats_per_dim_stderr": float(nats.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "nfe": nfe,
    }
    if images:
        out["bits_per_dim"] = bits_per_dim(out["nats_per_dim"])
    mixture = getattr(run.dataset, "mixture", None)
    if mixture is not None and not images:
        cond = labels if conditional else None
        out["exact_nats_per_dim"] = float(-mixture.log_prob(x0.double(), 0.0, cond).mean() / d)
        out["exact_nats_per_dim_at_sigma_min"] = float(
            -mixture.log_prob(x0.double(), sigma_min, cond).mean() / d
        )
    return out
