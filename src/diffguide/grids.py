"""Sigma grids: functions that return a descending tensor of n sigmas followed by a final 0."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from diffguide.errors import ConfigError, lookup
from diffguide.processes import timestep_shift


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) < 1:
        raise ConfigError(f"number of steps must be >= 1, got {n}")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ConfigError(
            f"need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho."""
    _check(n, sigma_min, sigma_max)
    if not rho > 0:
        raise ConfigError(f"the Karras grid needs rho > 0, got rho={rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def loglinear_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma (the geometric VE grid)."""
    _check(n, sigma_min, sigma_max)
    sigmas = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def uniform_t_sigmas(n: int, process) -> torch.Tensor:
    """The process's own grid: t uniform from t_max to t_min (DDIM's even timesteps for DDPM)."""
    if int(n) < 1:
        raise ConfigError(f"number of steps must be >= 1, got {n}")
    return process.uniform_t_sigmas(int(n))


def flow_shift_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, shift: float = 1.0
) -> torch.Tensor:
    """SD3 / diffusers' FlowMatchEulerDiscreteScheduler grid: flow time u evenly spaced, then shifted.

    u runs from u(sigma_max) to u(sigma_min), where u is the unshifted flow time of t = sigma / (1 + sigma);
    t = shift u / (1 + (shift - 1) u), sigma = t / (1 - t). diffusers' own grid is the limit
    sigma_max -> inf (t = 1, which scale-free coordinates cannot hold) with u ending at
    shift / (1000 + shift - 1) (its sigma_min, shifted once more).
    """
    _check(n, sigma_min, sigma_max)
    if not 0 < shift < math.inf:  # written so that NaN fails too
        raise ConfigError(f"the flow-shift grid needs a finite shift > 0, got shift={shift}")

    def unshift(sigma):  # t = sigma / (1 + sigma), then the inverse shift u = t / (shift - (shift - 1) t)
        t = sigma / (1 + sigma)
        return t / (shift - (shift - 1) * t)

    u = torch.linspace(unshift(sigma_max), unshift(sigma_min), n, dtype=torch.float64)
    t = timestep_shift(u, shift)
    return torch.cat([t / (1 - t), t.new_zeros(1)])


def _flow_shift_grid(n, process, sigma_min, sigma_max, rho):
    return flow_shift_sigmas(n, sigma_min, sigma_max, getattr(process, "shift", 1.0))


def _karras_grid(n, process, sigma_min, sigma_max, rho):
    return karras_sigmas(n, sigma_min, sigma_max, rho)


def _loglinear_grid(n, process, sigma_min, sigma_max, rho):
    return loglinear_sigmas(n, sigma_min, sigma_max)


def _uniform_t_grid(n, process, sigma_min, sigma_max, rho):
    if process is None:
        raise ConfigError("the 'uniform-t' grid needs a noise process")
    return uniform_t_sigmas(n, process)


# name -> grid(n, process, sigma_min, sigma_max, rho): read by the config check and make_sigmas alike.
# Each takes every argument and uses those it needs (uniform-t: the process's own t range).
GRIDS: dict[str, Callable[..., torch.Tensor]] = {
    "karras": _karras_grid,
    "loglinear": _loglinear_grid,
    "uniform-t": _uniform_t_grid,
    "flow-shift": _flow_shift_grid,  # the flow process's shift; 1 (uniform t) for other processes
}
GridName = Literal["karras", "loglinear", "uniform-t", "flow-shift"]  # the keys of GRIDS


def make_sigmas(
    grid: str,
    n: int,
    process=None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> torch.Tensor:
    """Build a named grid; sigma_min/sigma_max left as None take the process's range."""
    make = lookup("sigma grid", grid, GRIDS)
    if sigma_min is None:
        sigma_min = process.sigma_min if process is not None else 0.002
    if sigma_max is None:
        sigma_max = process.sigma_max if process is not None else 80.0
    return make(n, process, sigma_min, sigma_max, rho)


TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def spaced_timesteps(n: int, T: int, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
    """n descending integer timesteps of a T-step DDPM, spaced like diffusers' DDPM/DDIM schedulers.

    "linspace", "leading" and "trailing" are the three spacings of Lin et al. 2023, Table 2, computed
    exactly as diffusers' DDPMScheduler.set_timesteps does (including its rounding and steps_offset).
    """
    lookup("timestep spacing", spacing, dict.fromkeys(TIMESTEP_SPACINGS))
    if not 1 <= int(n) <= int(T):
        raise ConfigError(f"number of steps must be in 1..{T} for a {T}-step DDPM, got {n}")
    if spacing == "linspace":
        t = np.linspace(0, T - 1, n).round()[::-1]
    elif spacing == "leading":
        t = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    else:
        t = np.round(np.arange(T, 0, -T / n)) - 1
    return torch.as_tensor(t.astype(np.int64).copy())


def spaced_sigmas(n: int, process, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
    """The sigmas of a discrete DDPM process at `spaced_timesteps`, then a final 0 ([n + 1])."""
    if not hasattr(process, "sigmas") or not getattr(process, "discrete", False):
        raise ConfigError(f"timestep spacing needs a discrete DDPM process, got {type(process).__name__}")
    t = spaced_timesteps(n, process.T, spacing, steps_offset)
    if int(t.max()) >= process.T:
        raise ConfigError(f"steps_offset={steps_offset} puts a timestep past T-1={process.T - 1}")
    return torch.cat([process.sigmas[t], torch.zeros(1, dtype=torch.float64)])
