"""The moving averages of the weights: the exponential one that sampling uses by default, and EDM2's
power-function profiles whose snapshots post-hoc EMA reconstructs (posthoc.py)."""

from __future__ import annotations

import math

import numpy
import torch


class EMA:
    """Exponential moving average of a module's floating-point state (Polyak averaging).

    The decay at step k is min(decay, (1 + k) / (10 + k)): a warm-up that lets the average forget
    the random initial weights quickly. Integer state (counters) is copied, not averaged."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - d)
            else:
                self.shadow[k].copy_(v)


# ---------------------------------------------------------------------------------------------------
# EDM2's power-function EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of
# diffusion models", sec. 3.1 and appendix C.1-C.2)

# A power-function profile averages the weights of steps tau <= t with density (gamma+1) tau^gamma /
# t^(gamma+1); gamma > 0 keeps it increasing, and gamma = 0 (a plain average of every step) has the
# largest relative std, sqrt(1/12).
MAX_EMA_STD = math.sqrt(1 / 12)


def gamma_to_std(gamma: float) -> float:
    """The relative std sigma_rel of the power-function profile with exponent gamma (EDM2 eq. 3):
    sigma_rel^2 = (gamma+1) / ((gamma+2)^2 (gamma+3))."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def std_to_gamma(std: float) -> float:
    """The exponent gamma > 0 whose profile has relative std `std` in (0, sqrt(1/12)) (EDM2 eq. 3 solved
    for gamma: the largest real root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2))."""
    if not (math.isfinite(std) and 0 < std < MAX_EMA_STD):
        raise ValueError(f"a power-function EMA's relative std must be in (0, {MAX_EMA_STD:.4f}), got {std}")
    c = std**-2
    roots = numpy.roots([1.0, 7.0, 16.0 - c, 12.0 - c])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_beta(gamma: float, step: int) -> float:
    """The decay of the update to step `step` (1, 2, ...): beta = (1 - 1/step)^(gamma+1) (EDM2 eq. 4).

    Step 1 takes the weights as they are (beta = 0); after step t, step i <= t has weight
    (i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1): the profile's density integrated over (i-1, i]."""
    return (1 - 1 / step) ** (gamma + 1)


class PowerEMA:
    """EDM2's power-function EMAs of a module's floating-point state, one per relative std.

    Unlike EMA, the average has no fixed decay: at every step t it is the power-function average of
    all steps so far, so its length grows with training and stays a fixed fraction (`std`) of it.
    Integer state (counters) is copied, not averaged."""

    def __init__(self, module: torch.nn.Module, stds: list[float]):
        self.stds = [float(s) for s in stds]
        self.gammas = [std_to_gamma(s) for s in self.stds]
        state = module.state_dict()
        self.shadows = [{k: v.detach().clone() for k, v in state.items()} for _ in self.stds]

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step `step` (counting from 1)."""
        state = module.state_dict()
        for gamma, shadow in zip(self.gammas, self.shadows):
            weight = 1 - power_beta(gamma, step)
            for k, v in state.items():
                if v.dtype.is_floating_point:
                    shadow[k].lerp_(v.detach(), weight)
                else:
                    shadow[k].copy_(v)
