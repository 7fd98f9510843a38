"""DPM-Solver++(3M) and UniPC against answers known without them.

- Parity with diffusers' DPMSolverMultistepScheduler(solver_order=3) and UniPCMultistepScheduler
  (bh2, solver_order 1, 2, 3) on the same exact eps model and the same sigmas (the set-up of
  tests/samplers/test_diffusers_parity.py).
- The exponential-integrator weights against numerical quadrature, and a 3M step against the exact
  integral of the ODE when D is a polynomial in lambda: exact for quadratics with
  exact_third_order=True, an O(h^3) error per step with the reference code's weight.
- Empirical convergence orders on the exact tree mixture (and eight Gaussians) against a fine
  reference that is itself checked against Heun and DPM-Solver++(3M).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffguide.denoiser import FunctionDenoiser
from diffguide.errors import ConfigError
from diffguide.grids import karras_sigmas
from diffguide.mixtures import eight_gaussians
from diffguide.noise import PerSampleNoise
from diffguide.samplers import SAMPLERS, sample_heun
from diffguide.samplers.multistep import phi_weights, sample_dpmpp_3m, sample_ipndm, sample_unipc

F64 = torch.float64
SIGMA_MAX = 80.0
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


# ---------------------------------------------------------------------------------------------
# 1. parity with diffusers


@pytest.fixture(scope="module")
def parity():
    pytest.importorskip("diffusers", reason="diffusers is needed for the parity tests")
    import diffusers

    from tests.samplers.diffusers_loops import run_both

    return diffusers, run_both


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_dpmpp_3m_matches_dpm_solver_multistep_order_3(parity, spacing, steps):
    # dpmsolver++, order 3, final sigma 0; below 15 steps diffusers also lowers the second-to-last step
    diffusers, run_both = parity
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=3, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    theirs, ours = run_both(scheduler, SAMPLERS["dpmpp-3m"], scheduler.sigmas, vp=True)
    # the DPM-Solver step casts the sample to float32: float32 rounding, |x| <= 3
    assert (theirs - ours).abs().max() < 2e-5  # measured 2.1e-7 (5 steps) .. 3.2e-6 (50 steps)


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_unipc_multistep(parity, order, spacing, steps):
    # bh2, predict_x0, lower_order_final: diffusers' defaults, with solver_order = order
    diffusers, run_both = parity
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)

    def sampler(denoiser, x, sigmas, generator=None):
        return sample_unipc(denoiser, x, sigmas, order=order)

    theirs, ours = run_both(scheduler, sampler, scheduler.sigmas, vp=True)
    # its coefficients come from float32 sigmas; the sample stays float64
    assert (theirs - ours).abs().max() < 2e-6  # measured 3e-8 .. 2.4e-7


def test_registered_unipc_names():
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX
    mixture, sigmas = eight_gaussians(), karras_sigmas(12)
    assert torch.equal(SAMPLERS["unipc"](mixture, x, sigmas), sample_unipc(mixture, x, sigmas, order=2))
    assert torch.equal(SAMPLERS["unipc-3"](mixture, x, sigmas), sample_unipc(mixture, x, sigmas, order=3))
    with pytest.raises(ConfigError, match="order must be 1, 2 or 3, got 4"):
        sample_unipc(mixture, x, sigmas, order=4)


@pytest.mark.parametrize("steps", [2, 5, 10, 40])
@pytest.mark.parametrize("to_zero", [False, True], ids=["ends-at-sigma-min", "ends-at-0"])
def test_ipndm_matches_diffusers_ipndm_scheduler(parity, steps, to_zero):
    # diffusers takes the Adams-Bashforth step to 0 too: ours with extrapolate_final=True; on a grid
    # ending at sigma_min there is no step to 0 and the default is the same method
    from diffguide.adapters.diffusers import ipndm_scheduler_sample

    mixture = eight_gaussians(std=0.3)
    sigmas = karras_sigmas(steps, 0.002, SIGMA_MAX)
    sigmas = sigmas if to_zero else sigmas[:-1]
    x = torch.randn(300, 2, dtype=F64, generator=torch.Generator().manual_seed(3)) * SIGMA_MAX
    theirs = ipndm_scheduler_sample(mixture, x, sigmas)
    ours = sample_ipndm(mixture, x, sigmas, extrapolate_final=to_zero)
    assert (theirs - ours).abs().max() < 1e-9  # measured 2.6e-13 (10 steps, tree mixture)


def test_ipndm_warm_up_and_orders():
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX
    mixture, sigmas = eight_gaussians(), karras_sigmas(12)
    # order 1 is Euler, and the first step of any order is Euler (no earlier slopes yet)
    assert torch.allclose(
        sample_ipndm(mixture, x, sigmas, max_order=1), SAMPLERS["euler"](mixture, x, sigmas)
    )
    two_levels = torch.stack([sigmas[0], sigmas[1]])
    assert torch.allclose(sample_ipndm(mixture, x, two_levels), SAMPLERS["euler"](mixture, x, two_levels))
    # the second step: x1 + (s2 - s1) (3 d1 - d0) / 2, by hand
    d0 = (x - mixture(x, sigmas[0].expand(64))) / sigmas[0]
    x1 = x + (sigmas[1] - sigmas[0]) * d0
    d1 = (x1 - mixture(x1, sigmas[1].expand(64))) / sigmas[1]
    x2 = x1 + (sigmas[2] - sigmas[1]) * (3 * d1 - d0) / 2
    assert torch.allclose(sample_ipndm(mixture, x, sigmas[:3]), x2, rtol=1e-12, atol=1e-12)
    # a step to sigma = 0 returns D at the last nonzero level
    before = sample_ipndm(mixture, x, sigmas[:-1])
    assert torch.equal(sample_ipndm(mixture, x, sigmas), mixture(before, sigmas[-2].expand(64)))
    with pytest.raises(ConfigError, match="max_order must be 1, 2, 3 or 4, got 5"):
        sample_ipndm(mixture, x, sigmas, max_order=5)


# ---------------------------------------------------------------------------------------------
# 2. weights and single steps against closed forms


@pytest.mark.parametrize("h", [1e-3, 0.1, 0.7, 3.0])
def test_phi_weights_are_the_integrals(h):
    """c_j = int_0^h e^(u - h) u^j / j! du, by Gauss-Legendre quadrature (exact to 1e-15 here)."""
    nodes, weights = np.polynomial.legendre.leggauss(40)
    u = (nodes + 1) * h / 2
    for j, c in enumerate(phi_weights(h, 4)):
        expected = float(np.sum(weights * np.exp(u - h) * u**j) * h / 2) / math.factorial(j)
        assert c == pytest.approx(expected, rel=1e-9), (h, j)


def polynomial_in_lambda(coefficients):
    """A denoiser whose output is sum_k a_k lambda^k, lambda = -log sigma, whatever x is."""

    def d(x, sigma, cond):
        lam = -torch.log(torch.as_tensor(sigma, dtype=x.dtype)).reshape(-1, *([1] * (x.ndim - 1)))
        return sum(a * lam**k for k, a in enumerate(coefficients)) * torch.ones_like(x)

    return FunctionDenoiser(d)


def exact_increment(coefficients, sigma, sigma_next) -> float:
    """x(sigma') - (sigma' / sigma) x(sigma) = sigma' int_lambda^lambda' e^l D(l) dl, in closed form."""

    def antiderivative(lam):  # of e^l (a0 + a1 l + a2 l^2)
        a0, a1, a2 = coefficients
        return math.exp(lam) * (a0 - a1 + 2 * a2 + (a1 - 2 * a2) * lam + a2 * lam**2)

    lam, lam_next = -math.log(sigma), -math.log(sigma_next)
    return sigma_next * (antiderivative(lam_next) - antiderivative(lam))


def third_order_step_errors(coefficients, h: float, exact_third_order: bool) -> list[float]:
    """Errors of the order-3 steps (steps 3 and 4 of 6) of a log-uniform grid with step h in lambda."""
    sigmas = torch.tensor([math.exp(-k * h) for k in range(6)] + [0.0], dtype=F64)
    seen = []
    x = torch.ones(1, 1, dtype=F64)
    sample_dpmpp_3m(
        polynomial_in_lambda(coefficients),
        x,
        sigmas,
        callback=seen.append,
        exact_third_order=exact_third_order,
    )
    errors = []
    for i in (2, 3):  # 3M order 3 at steps 3 and 4 (step 5 is lowered on short grids, 6 returns D)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        increment = float(seen[i]["x"]) - s_next / s * float(seen[i - 1]["x"])
        errors.append(increment - exact_increment(coefficients, s, s_next))
    return errors


def test_dpmpp_3m_step_is_exact_for_quadratic_denoisers():
    """D(lambda) quadratic: the exact 3M step integrates it exactly; the reference code's weight
    (c_2 / 2 on the second derivative) leaves an O(h^3) error per step, so that method is 2nd order."""
    quadratic = (0.3, -0.8, 0.5)
    for h in (0.4, 0.2, 0.1):
        assert max(abs(e) for e in third_order_step_errors(quadratic, h, True)) < 1e-13  # measured 4e-16
    errors = [abs(third_order_step_errors(quadratic, h, False)[0]) for h in (0.4, 0.2, 0.1)]
    # measured 4.8e-3, 6.3e-4, 8.1e-5: the error falls by 8 per halving of h (local O(h^3))
    assert errors[0] > 1e-3
    for coarse, fine in zip(errors, errors[1:]):
        assert 7.0 < coarse / fine < 9.0, errors
    # both weights agree when D is linear in lambda (the p'' term vanishes)
    linear = (0.3, -0.8, 0.0)
    for exact in (True, False):
        assert max(abs(e) for e in third_order_step_errors(linear, 0.3, exact)) < 1e-13


# ---------------------------------------------------------------------------------------------
# 3. convergence orders


ORDER_STEPS = (32, 64, 128)


@pytest.fixture(scope="module")
def order_case(tree):
    """Per case: (mixture, sigma_min, start x, reference): UniPC-3 with 2048 steps, cross-checked."""
    cache = {}

    def get(case: str):
        if case not in cache:
            mixture, sigma_min = {"tree": (tree, 0.2), "8gaussians": (eight_gaussians(std=0.5), 0.002)}[case]
            x = PerSampleNoise.from_seed(1, 200).randn((2,), F64) * SIGMA_MAX
            ref = sample_unipc(mixture, x, karras_sigmas(2048, sigma_min, SIGMA_MAX), order=3)
            # the reference against two other methods: Heun (1024 steps, its own error ~1e-5) and
            # the exact-weight 3M (1024 steps); measured 7e-6 and 1.1e-7 (tree), 1.4e-5 and 1.8e-7 (8 Gaussians)
            heun = sample_heun(mixture, x, karras_sigmas(1024, sigma_min, SIGMA_MAX))
            dpm = sample_dpmpp_3m(
                mixture, x, karras_sigmas(1024, sigma_min, SIGMA_MAX), exact_third_order=True
            )
            assert rms(heun - ref) < 5e-5 and rms(dpm - ref) < 1e-6, (rms(heun - ref), rms(dpm - ref))
            cache[case] = (mixture, sigma_min, x, ref)
        return cache[case]

    return get


def rms(v: torch.Tensor) -> float:
    return float(v.pow(2).sum(1).mean().sqrt())


SAMPLER_VARIANTS = {
    "dpmpp-3m": SAMPLERS["dpmpp-3m"],
    "dpmpp-3m exact": lambda d, x, s: sample_dpmpp_3m(d, x, s, exact_third_order=True),
    "unipc": SAMPLERS["unipc"],
    "unipc-3": SAMPLERS["unipc-3"],
    "ipndm": SAMPLERS["ipndm"],
}

# Least-squares slope of -log(RMS error) against log(steps) over 32, 64, 128 Karras steps. Measured:
#   tree, 0.2..80:               dpmpp-3m 2.35, exact 2.98, unipc 2.73, unipc-3 2.98, ipndm 2.14
#   8 Gaussians (std 0.5), full: dpmpp-3m 1.62, exact 3.26, unipc 3.13, unipc-3 4.30, ipndm 2.03
# iPNDM uses equal-step Adams-Bashforth weights on an unequal grid: order 2, whatever max_order (with
# extrapolated slopes on the final step to 0, as diffusers does, the tree's slope drops to 1.15).
# Theory: the reference-code 3M is order 2 (see test above; over 64..256 steps its slopes are 2.2 and
# 1.6); exact 3M order 3; UniPC with predictor order p is order p + 1 in the interior, but its last
# evaluation point is reached by an uncorrected order-2 prediction (the corrector is not applied at
# the final step, whose result is D), so both UniPC variants are order 3 overall; on the smooth
# eight Gaussians that last step's error is small and UniPC-3 still shows ~4 over these steps.
ORDER_BOUNDS = {
    "tree": {
        "dpmpp-3m": (1.8, 2.6),
        "dpmpp-3m exact": (2.7, 3.4),
        "unipc": (2.5, 3.3),
        "unipc-3": (2.7, 3.5),
        "ipndm": (1.8, 2.6),
    },
    "8gaussians": {
        "dpmpp-3m": (1.2, 2.3),
        "dpmpp-3m exact": (2.8, 3.7),
        "unipc": (2.8, 3.6),
        "unipc-3": (3.6, 4.9),
        "ipndm": (1.8, 2.6),
    },
}


@pytest.mark.parametrize("sampler", list(SAMPLER_VARIANTS))
@pytest.mark.parametrize(
    "case", [pytest.param("tree", marks=pytest.mark.slow), "8gaussians"], ids=["tree", "8gaussians"]
)
def test_convergence_order(sampler, case, order_case):
    mixture, sigma_min, x, ref = order_case(case)
    errors = [
        rms(SAMPLER_VARIANTS[sampler](mixture, x, karras_sigmas(k, sigma_min, SIGMA_MAX)) - ref)
        for k in ORDER_STEPS
    ]
    order = -float(np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0])
    lo, hi = ORDER_BOUNDS[case][sampler]
    assert lo <= order <= hi, (sampler, case, order, errors)
