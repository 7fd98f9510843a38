"""Generate samples from any denoiser with any sampler, with per-sample seeds, in batches."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from diffguide.errors import ConfigError, DiffguideError
from diffguide.grids import make_sigmas
from diffguide.noise import PerSampleNoise
from diffguide.samplers.base import check_sigmas
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


def physical_memory() -> int | None:
    """This machine's RAM in bytes (POSIX sysconf), or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_sample_count(n: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
    """Refuse n < 1, or n samples that cannot fit in this machine's memory.

    All n samples are returned at once, on the host, and are held twice while the batches are
    joined, so n * (bytes per sample) * 2 must fit in the RAM; anything larger would only fail (or
    swap) after minutes of sampling.
    """
    if n < 1:
        raise ConfigError(f"number of samples must be >= 1, got {n}")
    memory = physical_memory()
    per_sample = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if memory is not None and n * per_sample * 2 > memory:
        raise ConfigError(
            f"number of samples {n} is too large: {n} samples of shape {tuple(shape)} take "
            f"{_size(n * per_sample)} as {str(dtype).removeprefix('torch.')}, held twice while the batches "
            f"are joined, and this machine has {_size(memory)} of memory; ask for at most "
            f"{memory // (2 * per_sample)} (or sample in parts with different seeds)"
        )


def _size(nbytes: float) -> str:
    """A byte count in words: 1.6 KiB, 7.3 TiB."""
    unit = "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024:
            break
        nbytes, unit = nbytes / 1024, larger
    return f"{int(nbytes)} bytes" if unit == "bytes" else f"{nbytes:.1f} {unit}"


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
    check_sample_count(n, shape, dtype)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    fn = sampler if callable(sampler) else get_sampler(sampler)  # a name, or a sampler function
    out = []
    sigmas = check_sigmas(sigmas, to_zero=True).to(device)
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


def sampling_callback(
    bar, steps: int | None = None, then: Callable | None = None, offset: float = 0
) -> Callable[[dict], None]:
    """A `generate` callback that moves a progress bar (anything with `n` and `update(k)`, e.g. tqdm)
    counting samples: after step i of the batch starting at sample `start`, offset + start + len(x) *
    (i + 1) / steps samples are done. steps: the sampler's number of steps (None: the dict's "steps");
    then: another callback to call with the same dict (a GIF recorder, ...); offset: samples counted
    before this `generate` call (several sample sets on one bar)."""

    def callback(info: dict) -> None:
        done = offset + info.get("start", 0) + len(info["x"]) * (info["i"] + 1) / (steps or info["steps"])
        if done > bar.n:
            bar.update(done - bar.n)
        if then is not None:
            then(info)

    return callback


def sample_run(run, n: int, *, seed: int = 0, sampler=None, steps=None, grid=None, cond=None, **kwargs):
    """Generate from a loaded run with its saved sampling defaults, each overridable (None = the run's).

    cond: None, a class for all samples, or per-sample labels, each in 0..run.num_classes - 1."""
    s = run.config.sample
    steps = s.steps if steps is None else steps  # steps=0 is an error, not the run's default
    sigmas = sigma_grid(grid or s.grid, steps, run.process, s.sigma_min, s.sigma_max, s.rho)
    check_class_labels(cond, run.num_classes, run.config.name)
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


def check_class_labels(cond, num_classes: int, name: str = "this") -> None:
    """Class conditions (an int or a tensor of labels) must lie in 0..num_classes - 1 (num_classes,
    the null label, is also accepted: it asks a CFG-trained net for its unconditional output)."""
    if cond is None or isinstance(cond, dict):  # attribute conditions are checked by the dataset
        return
    labels = torch.as_tensor(cond)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ConfigError(f"class labels must be integers, got {cond!r}")
    if not num_classes:
        raise ConfigError(f"run {name!r} is unconditional; leave out the class condition (got {cond!r})")
    low, high = (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)
    if low < 0 or high > num_classes:
        bad = high if high > num_classes else low
        raise ConfigError(
            f"class label {bad} is out of range for run {name!r}: classes are 0..{num_classes - 1} "
            f"({num_classes} = the null label)"
        )
