"""Higher-order multistep samplers: DPM-Solver++(3M) and UniPC (exponential integrators), and iPNDM.

Both solve the probability-flow ODE in lambda = -log sigma, where (scale-free coordinates, EDM eq. 3)
it is linear in x:

    x(sigma') = (sigma' / sigma) x(sigma) + int_0^h e^(u - h) D(lambda + u) du,   h = lambda' - lambda,

and replace D by a polynomial through the last few denoiser outputs (one evaluation per step). With
D(lambda + u) = sum_j D^(j) u^j / j!, the integral is sum_j c_j D^(j) with the weights

    c_j(h) = int_0^h e^(u - h) u^j / j! du,   c_0 = 1 - e^-h,   c_j = h^j / j! - c_(j-1)

(the phi functions of exponential integrators: c_j = h^(j+1) phi_(j+1)(-h)). DPM-Solver++(2M) in
`samplers.py` is the first two terms with a midpoint weight. Like diffusers, both samplers lower the
order while too few past outputs exist and at the last steps; a step to sigma = 0 returns D (the
limit sigma' -> 0 of every formula here). The same signature and callback as `samplers.py`.
"""

from __future__ import annotations

import math

import torch

from diffguide.errors import ConfigError
from diffguide.samplers.base import _d, _denoise, _report, check_sigmas

# DPM-Solver++(3M), as diffusers: on grids of fewer steps the second-to-last step is taken at order 2.
LOWER_ORDER_BELOW = 15


def phi_weights(h: float, k: int) -> list[float]:
    """[c_0, ..., c_(k-1)]: c_j = int_0^h e^(u - h) u^j / j! du, the weight of D^(j) over a step h."""
    weights = [-math.expm1(-h)]
    for j in range(1, k):
        weights.append(h**j / math.factorial(j) - weights[-1])
    return weights


def _lambda(sigma: torch.Tensor) -> float:
    return -math.log(float(sigma))


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser,
    x,
    sigmas,
    *,
    cond=None,
    generator=None,
    callback=None,
    exact_third_order: bool = False,
):
    """DPM-Solver++(3M) (Lu et al. 2022, multistep form of their reference code), data prediction.

    D is the quadratic through the last three outputs in lambda, D(lambda + u) = m0 + u p' + u^2 p''/2
    (Newton divided differences), and the step is c_0 m0 + c_1 p' + w c_2 p''. Steps 1 and 2 are taken
    at orders 1 and 2 (the midpoint 2M step), as is the second-to-last step on grids of fewer than
    15 steps (diffusers' lower_order_final).

    The default w = 1/2 is the field's DPM-Solver++(3M): DPM-Solver's reference code, diffusers'
    DPMSolverMultistepScheduler(solver_order=3) and k-diffusion all weight the p'' term by c_2 / 2,
    so the step is exact only for linear D and the method is of order 2, not 3 (tests/
    test_samplers_multistep.py measures both). We keep it as the default for parity and because it is
    the more accurate of the two at 16-32 evaluations on our benchmarks; exact_third_order=True uses
    w = 1, the exact integral of the quadratic, a true order-3 method that wins from ~64 evaluations.
    """
    sigmas = check_sigmas(sigmas)
    n = len(sigmas) - 1
    third = 1.0 if exact_third_order else 0.5
    history: list[tuple[float, torch.Tensor]] = []  # (lambda_j, D_j) of the last 3 points, newest last
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        lam = _lambda(sigma)
        history = [*history[-2:], (lam, denoised)]
        if float(sigma_next) == 0:
            x = denoised
        else:
            h = _lambda(sigma_next) - lam
            order = min(3, len(history))
            if i == n - 2 and n < LOWER_ORDER_BELOW:
                order = min(order, 2)
            c = phi_weights(h, 3)
            x = (float(sigma_next) / float(sigma)) * x + c[0] * denoised
            if order >= 2:
                lam1, m1 = history[-2]
                slope01 = (denoised - m1) / (lam - lam1)  # first divided difference f[0, 1]
                if order == 2:  # DPM-Solver++(2M), midpoint form: c_0 (m0 + h/2 f[0, 1])
                    x = x + (c[0] * h / 2) * slope01
                else:
                    lam2, m2 = history[-3]
                    curvature = (slope01 - (m1 - m2) / (lam1 - lam2)) / (lam - lam2)  # f[0, 1, 2]
                    # p' = f[0,1] + (lam - lam1) f[0,1,2] and p'' = 2 f[0,1,2] at the current point
                    x = x + c[1] * (slope01 + (lam - lam1) * curvature) + (2 * third * c[2]) * curvature
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def _unipc_coefficients(ratios: list[float], h: float, c: list[float]) -> list[float]:
    """UniPC's rho: the solution of sum_k rho_k r_k^(j-1) = j! c_j / (h^j c_0), j = 1..K (Zhao et al. 2023).

    With B(h) = e^h - 1 (bh2) the right side is the ratio of the exponential-integrator weights, so
    sum_k rho_k D_k, D_k = (m_k - m0) / r_k, matches sum_j c_j D^(j) / c_0 to order K. For K = 1
    (the order-2 predictor, the order-1 corrector) UniPC's reference code and diffusers use rho = 1/2
    instead of the solution; so do we (UniP-2 is then DPM-Solver++(2M), midpoint form).
    """
    k = len(ratios)
    if k == 1:
        return [0.5]
    rhs = [math.factorial(j) * c[j] / (h**j * c[0]) for j in range(1, k + 1)]
    matrix = torch.tensor([[r ** (j - 1) for r in ratios] for j in range(1, k + 1)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(rhs, dtype=torch.float64)).tolist()


def _unipc_update(x, sigma, sigma_next, lambdas, outputs, order: int, new=None):
    """UniP (new=None) or UniC (new = D at sigma_next) of `order` from x at sigma, bh2, data prediction.

    lambdas/outputs end with the base point (lambda = -log sigma, m0 = its D); the predictor uses the
    order - 1 points before it, the corrector order - 1 points before it and `new` (ratio r = 1).
    """
    lam, m0 = lambdas[-1], outputs[-1]
    h = _lambda(sigma_next) - lam
    c = phi_weights(h, order + 1)
    ratios = [(lambdas[-1 - k] - lam) / h for k in range(1, order)]
    diffs = [(outputs[-1 - k] - m0) / r for k, r in zip(range(1, order), ratios)]
    if new is not None:
        ratios.append(1.0)
        diffs.append(new - m0)
    x = (float(sigma_next) / float(sigma)) * x + c[0] * m0
    if diffs:
        rho = _unipc_coefficients(ratios, h, c)
        x = x + c[0] * sum(r * d for r, d in zip(rho, diffs))
    return x


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, order: int = 2):
    """UniPC (Zhao et al. 2023, B(h) = e^h - 1 "bh2"), data prediction: predictor UniP-p, corrector UniC.

    Each step evaluates D once at the predicted point; UniC then re-solves the step just taken with
    that new value included (no extra evaluation), and the next prediction starts from the corrected
    x, reusing that same value of D. `order` is diffusers' solver_order p: the predictor's
    order, min(p, step + 1, steps left), as UniPCMultistepScheduler with lower_order_final; the
    corrector raises the accuracy of a step by one order. The last step (to sigma = 0) returns D, so
    the corrector is not applied there.
    """
    if order not in (1, 2, 3):
        raise ConfigError(f"UniPC order must be 1, 2 or 3, got {order}")
    sigmas = check_sigmas(sigmas)
    n = len(sigmas) - 1
    lambdas: list[float] = []  # of the last `order` points visited, newest last
    outputs: list[torch.Tensor] = []
    x_base = sigma_base = None  # corrected x and sigma of the previous point, for UniC
    step_order = 0
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        if i > 0 and float(sigma_next) > 0:
            x = _unipc_update(x_base, sigma_base, sigma, lambdas, outputs, step_order, new=denoised)
        lambdas, outputs = [*lambdas, _lambda(sigma)][-order:], [*outputs, denoised][-order:]
        if float(sigma_next) == 0:
            x_next = denoised
        else:
            step_order = min(order, i + 1, n - i)
            x_next = _unipc_update(x, sigma, sigma_next, lambdas, outputs, step_order)
        x_base, sigma_base, x = x, sigma, x_next
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_unipc_3(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """UniPC (bh2) with a 3rd-order predictor (diffusers' UniPCMultistepScheduler(solver_order=3))."""
    return sample_unipc(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, order=3)


# Adams-Bashforth weights for equal steps, newest slope first (order 1 is Euler).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@torch.no_grad()
def sample_ipndm(
    denoiser,
    x,
    sigmas,
    *,
    cond=None,
    generator=None,
    callback=None,
    max_order: int = 4,
    extrapolate_final: bool = False,
):
    """iPNDM (Zhang & Chen 2023, "improved PNDM"): Adams-Bashforth on the slope (x - D) / sigma.

    Each step is an Euler step in sigma whose slope is the fixed-weight Adams-Bashforth combination of
    the last max_order slopes, warming up with orders 1, 2, 3 (no Runge-Kutta start, unlike PNDM). In
    scale-free coordinates this is the DDIM step with an extrapolated eps, as in Zhou et al. 2024 and
    diffusers' IPNDMScheduler. The weights are those of equal steps whatever the grid: on the Karras
    grid the method converges at order 2, not 4 (measured in tests/test_samplers_multistep.py), but
    with a small constant: it is the most accurate sampler here at 8-16 evaluations (benchmarks/).

    By default a step to sigma = 0 returns D (the Euler step), as every other sampler here does;
    extrapolate_final=True takes the Adams-Bashforth step there too, as diffusers does (then equal to
    IPNDMScheduler to 1e-12, tested). Extrapolating over a last step that does not shrink with the
    grid makes the method first order (measured slope 1.15 instead of 2.14 on a grid ending at 0.2);
    where the last step does shrink it can help at small budgets (benchmarks/results/peers.md).
    """
    if max_order not in ADAMS_BASHFORTH:
        raise ConfigError(f"iPNDM max_order must be 1, 2, 3 or 4, got {max_order}")
    sigmas = check_sigmas(sigmas)
    slopes: list[torch.Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        slopes = [_d(x, denoised, sigma), *slopes][:max_order]
        if float(sigma_next) == 0 and not extrapolate_final:
            x = denoised  # the Euler step to 0, as every sampler here
        else:
            weights = ADAMS_BASHFORTH[len(slopes)]
            x = x + float(sigma_next - sigma) * sum(w * d for w, d in zip(weights, slopes))
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x
