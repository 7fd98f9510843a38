"""Generate samples from any denoiser with any sampler, with per-sample seeds, in batches."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffguide.errors import ConfigError, DiffguideError
from diffguide.grids import make_sigmas
from diffguide.noise import PerSampleNoise
from diffguide.samplers.registry import get_sampler


def sigma_grid(
    grid: str = "karras",
    steps: int = 32,
    process=None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> torch.Tensor:
    """The sigma grid for sampling; bounds left as None default to the process's range."""
    return make_sigmas(grid, steps, process, sigma_min, sigma_max, rho)


def labels_for(cond, start: int, n: int):
    """The slice of a condition for samples start..start+n-1: None, a class for all, or per sample."""
    if cond is None:
        return None
    if isinstance(cond, int):
        return torch.full((n,), cond, dtype=torch.long)
    if isinstance(cond, dict):
        return {k: v[start : start + n] for k, v in cond.items()}
    return torch.as_tensor(cond)[start : start + n]


def generate(
    denoiser,
    n: int,
    shape: tuple[int, ...],
    *,
    sigmas: torch.Tensor,
    sampler: str | Callable = "heun",
    seed: int = 0,
    cond=None,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callable | None = None,
    sampler_kwargs: dict | None = None,
) -> torch.Tensor:
    """n samples [n, *shape]; sample i starts from and draws noise from seed stream (seed, i) only."""
    if n < 1:
        raise ConfigError(f"number of samples must be >= 1, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    fn = sampler if callable(sampler) else get_sampler(sampler)  # a name, or a sampler function
    out = []
    sigmas = sigmas.to(device)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        noise = PerSampleNoise.from_seed(seed, b, start=start, device=device)
        x = noise.randn(shape, dtype=dtype) * sigmas[0].to(dtype)
        labels = labels_for(cond, start, b)
        if torch.is_tensor(labels):
            labels = labels.to(device)
        cb = None if callback is None else (lambda info, start=start: callback({**info, "start": start}))
        try:
            x = fn(denoiser, x, sigmas, cond=labels, generator=noise, callback=cb, **(sampler_kwargs or {}))
        except torch.OutOfMemoryError:
            raise DiffguideError(
                f"out of memory on {torch.device(device)} sampling {b} at a time; try a smaller batch, e.g. "
                f"--batch-size {max(1, b // 2)} (each sample's noise does not depend on the batch size; a "
                f"network's results agree across batch sizes to float rounding)"
            ) from None
        out.append(x.cpu())
    return torch.cat(out)


def sample_run(run, n: int, *, seed: int = 0, sampler=None, steps=None, grid=None, cond=None, **kwargs):
    """Generate from a loaded run with its saved sampling defaults, each overridable."""
    s = run.config.sample
    sigmas = sigma_grid(grid or s.grid, steps or s.steps, run.process, s.sigma_min, s.sigma_max, s.rho)
    return generate(
        run.denoiser,
        n,
        run.dataset.shape,
        sigmas=sigmas,
        sampler=sampler or s.sampler,
        seed=seed,
        cond=cond,
        **kwargs,
    )
