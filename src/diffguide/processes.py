"""Noise processes as scale s(t) and noise level sigma(t) (Karras et al. 2022, eq. 4 and Table 1).

A process perturbs data as x_t = s(t) * (x0 + sigma(t) * eps). Samplers work in the scale-free
coordinates x = x_t / s(t), so a model trained under one process can be sampled by any sampler: the
preconditioning wrapper converts sigma back to the process's t with `t_of_sigma`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from diffguide.errors import ConfigError, lookup


def _t(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64) if not torch.is_tensor(v) else v


class NoiseProcess:
    """Base class. t runs from t_min (data) to t_max (noise); sigma(t) increases with t."""

    name = "process"
    discrete = False
    t_min = 0.0
    t_max = 1.0

    @classmethod
    def from_config(cls, cfg: ProcessConfig) -> NoiseProcess:
        """The process with the parameters of a ProcessConfig it reads (the others are ignored)."""
        return cls()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is told about the noise level (the process's conventional input)."""
        return _t(t)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ U(t_min, t_max) for training with uniform-t noise sampling."""
        return self.t_from_unit(torch.rand(n, generator=generator, dtype=torch.float64))

    def t_from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """The process's t for u in [0, 1] (noise-level distributions drawn on [0, 1], e.g. logit-normal)."""
        return self.t_min + (self.t_max - self.t_min) * u

    def uniform_t_sigmas(self, n: int) -> torch.Tensor:
        """n sigmas at t uniformly spaced from t_max down to t_min, then a final 0 ([n + 1])."""
        t = torch.linspace(self.t_max, self.t_min, n, dtype=torch.float64)
        return torch.cat([self.sigma(t), t.new_zeros(1)])

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """Std of x_t given x0 in the process's own coordinates: s(t) * sigma(t)."""
        return self.scale(t) * self.sigma(t)


def linear_betas(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Ho et al. 2020: betas evenly spaced from beta_start to beta_end."""
    if not 0 < beta_start < beta_end < 1:
        raise ConfigError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999 (beta_start and beta_end are not used)."""
    s = 0.008
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


# name -> betas(T, beta_start, beta_end), the DDPM process's `schedule` choices
BETA_SCHEDULES: dict[str, Callable[[int, float, float], torch.Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
}


class DDPM(NoiseProcess):
    """Ho et al. 2020 discrete VP process, t in {0, ..., T-1}; linear (1e-4..0.02) or cosine betas."""

    name = "ddpm"
    discrete = True

    def __init__(
        self, T: int = 1000, schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02
    ):
        if T < 2:
            raise ConfigError(f"DDPM needs T >= 2 steps, got T={T}")
        self.T = int(T)
        self.schedule = schedule
        self.betas = lookup("beta schedule", schedule, BETA_SCHEDULES)(self.T, beta_start, beta_end)
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.sigmas = ((1 - self.alpha_bar) / self.alpha_bar).sqrt()  # [T], increasing
        self.log_sigmas = self.sigmas.log()
        self.t_max = float(self.T - 1)

    @classmethod
    def from_config(cls, cfg: ProcessConfig) -> DDPM:
        return cls(cfg.T, cfg.schedule, cfg.beta_start, cfg.beta_end)

    @classmethod
    def from_alpha_bar(cls, alpha_bar) -> DDPM:
        """A DDPM with a given table alpha_bar[t], t = 0..T-1 (e.g. a diffusers scheduler's alphas_cumprod)."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1)
        if ab.numel() < 2 or not bool(((ab > 0) & (ab < 1)).all()) or not bool((ab[1:] < ab[:-1]).all()):
            raise ConfigError(
                f"alpha_bar must be a strictly decreasing table in (0, 1) of length >= 2; got {ab.numel()} "
                f"values from {float(ab[0]):.6g} to {float(ab[-1]):.6g}"
            )
        process = cls(T=ab.numel())
        process.schedule = "custom"
        process.alpha_bar = ab
        process.alphas = ab / torch.cat([ab.new_ones(1), ab[:-1]])
        process.betas = 1 - process.alphas
        process.sigmas = ((1 - ab) / ab).sqrt()
        process.log_sigmas = process.sigmas.log()
        return process

    def sigma(self, t):
        # linear interpolation in log sigma between integer steps, so fractional t is allowed
        t = _t(t).to(torch.float64).clamp(0, self.T - 1)
        lo = t.floor().long().clamp(max=self.T - 2)
        frac = t - lo
        ls = self.log_sigmas.to(t.device)
        return ((1 - frac) * ls[lo] + frac * ls[lo + 1]).exp()

    def scale(self, t):
        return 1 / (1 + self.sigma(t) ** 2).sqrt()

    def t_of_sigma(self, sigma):
        sigma = _t(sigma)
        dtype = sigma.dtype
        ls = self.log_sigmas.to(sigma.device)
        log_s = sigma.to(torch.float64).clamp(min=1e-30).log()
        idx = torch.searchsorted(ls, log_s.reshape(-1).contiguous()).reshape(log_s.shape)
        lo = (idx - 1).clamp(0, self.T - 2)
        frac = ((log_s - ls[lo]) / (ls[lo + 1] - ls[lo])).clamp(0, 1)
        return (lo + frac).to(dtype)

    def sample_t(self, n, generator=None):
        return torch.randint(0, self.T, (n,), generator=generator).to(torch.float64)

    def uniform_t_sigmas(self, n):
        """DDIM-style grid: n integer timesteps spread evenly over [0, T-1] (plus a final 0)."""
        if n > self.T:
            raise ConfigError(f"cannot take {n} steps with a {self.T}-step DDPM; use steps <= {self.T}")
        t = torch.linspace(self.T - 1, 0, n, dtype=torch.float64).round()
        return torch.cat([self.sigmas[t.long()], torch.zeros(1, dtype=torch.float64)])


class VPSDE(NoiseProcess):
    """Song et al. 2021 continuous VP SDE: beta(t) = beta_min + t (beta_max - beta_min), t in [eps, 1]."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_eps: float = 1e-3):
        if not 0 <= beta_min < beta_max < math.inf:
            raise ConfigError(f"need 0 <= beta_min < beta_max (finite), got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_eps)

    @classmethod
    def from_config(cls, cfg: ProcessConfig) -> VPSDE:
        return cls(cfg.beta_min, cfg.beta_max)

    def _log_alpha_bar(self, t):
        t = _t(t)
        return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min

    def sigma(self, t):
        return torch.expm1(-self._log_alpha_bar(t)).sqrt()

    def scale(self, t):
        return (0.5 * self._log_alpha_bar(t)).exp()

    def t_of_sigma(self, sigma):
        # solve 0.5 d t^2 + b t = log(1 + sigma^2) for t >= 0
        sigma = _t(sigma)
        d, b = self.beta_max - self.beta_min, self.beta_min
        c = torch.log1p(sigma.to(torch.float64) ** 2)
        t = (-b + (b * b + 2 * d * c).sqrt()) / d
        return t.to(sigma.dtype)

    def c_noise(self, t):
        return 999 * _t(t)  # Song et al.'s DDPM-compatible convention


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max < math.inf:  # written so that NaN fails too
        raise ConfigError(
            f"need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


class VESDE(NoiseProcess):
    """Song et al. 2021 VE SDE, geometric form: sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        _check_sigma_range(sigma_min, sigma_max)
        self.s_min, self.s_max = float(sigma_min), float(sigma_max)

    @classmethod
    def from_config(cls, cfg: ProcessConfig) -> VESDE:
        return cls(cfg.sigma_min, cfg.sigma_max)

    def sigma(self, t):
        return self.s_min * (self.s_max / self.s_min) ** _t(t)

    def t_of_sigma(self, sigma):
        sigma = _t(sigma)
        return torch.log(sigma / self.s_min) / math.log(self.s_max / self.s_min)

    def c_noise(self, t):
        return torch.log(0.5 * self.sigma(t))  # EDM's VE convention


class VESDESeed(NoiseProcess):
    """The VE SDE dx = sigma^t dw of the score-SDE tutorial: std(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma))."""

    name = "ve-seed"

    def __init__(self, sigma: float = 25.0, t_eps: float = 1e-5):
        if not 1 < sigma < math.inf:  # written so that NaN fails too
            raise ConfigError(f"the VE SDE dx = sigma^t dw needs a finite sigma > 1, got sigma={sigma}")
        self.base, self.t_min = float(sigma), float(t_eps)

    @classmethod
    def from_config(cls, cfg: ProcessConfig) -> VESDESeed:
        return cls(cfg.sigma)

    def sigma(self, t):
        t = _t(t)
        return (torch.expm1(2 * t * math.log(self.base)) / (2 * math.log(self.base))).sqrt()

    def t_of_sigma(self, sigma):
        sigma = _t(sigma)
        return torch.log1p(2 * math.log(self.base) * sigma**2) / (2 * math.log(self.base))

    def diffusion(self, t):
        """g(t) = sigma^t, the diffusion coefficient of the forward SDE."""
        return self.base ** _t(t)


class EDMProcess(NoiseProcess):
    """Karras et al. 2022: sigma(t) = t, s(t) = 1; training noise ln sigma ~ N(P_mean, P_std^2)."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        _check_sigma_range(sigma_min, sigma_max)
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    @classmethod
    def from_config(cls, cfg: ProcessConfig) -> EDMProcess:
        return cls(cfg.sigma_min, cfg.sigma_max)

    def sigma(self, t):
        return _t(t)

    def t_of_sigma(self, sigma):
        return _t(sigma)

    def c_noise(self, t):
        return torch.log(_t(t)) / 4


def timestep_shift(t, shift: float):
    """SD3's timestep shift (Esser et al. 2024, eq. 23): t' = shift t / (1 + (shift - 1) t)."""
    t = _t(t)
    return shift * t / (1 + (shift - 1) * t)


class FlowProcess(NoiseProcess):
    """Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023; SD3): x_t = (1 - t) x0 + t eps.

    In the scale-free form x_t = s(t) (x0 + sigma(t) eps): s(t) = 1 - t, sigma(t) = t / (1 - t). t = 1
    (pure noise) is sigma = inf, which scale-free coordinates cannot hold: t runs over
    [t(sigma_min), t(sigma_max)]. `shift` is SD3's timestep shift, applied to every t the process draws
    (`t_from_unit`: uniform-t and logit-normal training) and to the `flow-shift` grid. The network is
    told 1000 t, the timestep of diffusers' FlowMatchEulerDiscreteScheduler.
    """

    name = "flow"
    num_train_timesteps = 1000  # c_noise = 1000 t: diffusers' timestep = sigma_flow * num_train_timesteps

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, shift: float = 1.0):
        _check_sigma_range(sigma_min, sigma_max)
        if not 0 < shift < math.inf:  # written so that NaN fails too
            raise ConfigError(f"the flow process needs a finite timestep shift > 0, got shift={shift}")
        self.shift = float(shift)
        self.s_min, self.s_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = sigma_min / (1 + sigma_min), sigma_max / (1 + sigma_max)

    @property
    def sigma_min(self) -> float:
        return self.s_min  # as given: sigma(t_min) would round-trip through t (0.01 -> 0.010000000000000002)

    @property
    def sigma_max(self) -> float:
        return self.s_max

    @classmethod
    def from_config(cls, cfg: ProcessConfig) -> FlowProcess:
        return cls(cfg.sigma_min, cfg.sigma_max, cfg.shift)

    def sigma(self, t):
        t = _t(t)
        return t / (1 - t)

    def scale(self, t):
        return 1 - _t(t)

    def t_of_sigma(self, sigma):
        sigma = _t(sigma)
        return sigma / (1 + sigma)

    def c_noise(self, t):
        return self.num_train_timesteps * _t(t)

    def t_from_unit(self, u):
        """SD3: u in [0, 1] is shifted, then kept in the process's range [t_min, t_max]."""
        return timestep_shift(u, self.shift).clamp(self.t_min, self.t_max)


# name -> process class; each class's from_config reads the ProcessConfig fields it needs.
PROCESSES: dict[str, type[NoiseProcess]] = {
    "ddpm": DDPM,
    "vp": VPSDE,
    "ve": VESDE,
    "ve-seed": VESDESeed,
    "edm": EDMProcess,
    "flow": FlowProcess,
}

ProcessName = Literal["ddpm", "vp", "ve", "ve-seed", "edm", "flow"]  # the keys of PROCESSES
BetaSchedule = Literal["linear", "cosine"]  # the keys of BETA_SCHEDULES


@dataclass
class ProcessConfig:
    """Which noise process, with its parameters (unused ones are ignored by the other processes)."""

    name: ProcessName = "edm"
    T: int = 1000  # ddpm
    schedule: BetaSchedule = "linear"  # ddpm
    beta_start: float = 1e-4  # ddpm, linear schedule
    beta_end: float = 0.02  # ddpm, linear schedule
    beta_min: float = 0.1  # vp
    beta_max: float = 20.0  # vp
    sigma_min: float = 0.002  # ve, edm, flow (t_min = sigma_min / (1 + sigma_min))
    sigma_max: float = 80.0  # ve, edm, flow
    sigma: float = 25.0  # ve-seed
    shift: float = 1.0  # flow: SD3's timestep shift t' = shift t / (1 + (shift - 1) t)


def make_process(cfg: ProcessConfig) -> NoiseProcess:
    """Build a process from its config, checking the name and the parameters it reads."""
    return lookup("noise process", cfg.name, PROCESSES).from_config(cfg)
