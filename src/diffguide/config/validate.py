"""Range and name checks that types alone cannot express, one function per config section.

Every name is looked up in the registry that also builds the thing it names (processes, losses,
grids, samplers, architectures, embeddings, datasets), so the check and the construction cannot
disagree. All of it runs at config time, before any folder is written or any step is trained.
"""

from __future__ import annotations

import math
import typing

from diffguide.config.schema import (
    DiffusionConfig,
    ModelConfig,
    OnNan,
    Precision,
    RunConfig,
    SampleConfig,
    TrainConfig,
)
from diffguide.data.registry import check_data_config
from diffguide.errors import ConfigError, closest, lookup
from diffguide.grids import GRIDS
from diffguide.losses import DenoisingLoss
from diffguide.models.nets.embedding import EMBEDDINGS
from diffguide.models.nets.registry import get_architecture
from diffguide.optim import LR_SCHEDULES, OPTIMIZERS
from diffguide.processes import NoiseProcess, make_process
from diffguide.samplers.registry import get_sampler_spec


def validate(cfg: RunConfig) -> RunConfig:
    """The config itself if every value is usable, else a ConfigError naming the value and what would
    be right."""
    check_train(cfg.train)
    check_model(cfg.model)
    process = check_diffusion(cfg.diffusion)
    check_sample(cfg.sample, process)
    if cfg.data.size < 1:
        raise ConfigError(f"data.size must be >= 1, got {cfg.data.size}")
    check_data_config(cfg.data)  # the dataset name and its options (no data files are read)
    return cfg


def _raise_first(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def check_train(t: TrainConfig) -> None:
    """train.*: counts, rates and betas in range; optimizer, decay, precision and on_nan names."""
    _raise_first(
        [
            (t.steps >= 1, f"train.steps must be >= 1, got {t.steps}"),
            (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
            (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
            (0 <= t.p_uncond <= 1, f"train.p_uncond must be in [0, 1], got {t.p_uncond}"),
            (0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}"),
            (
                all(_number(s) and 0 < s < 12**-0.5 for s in t.ema_stds)
                and len(set(t.ema_stds)) == len(t.ema_stds),
                "train.ema_stds must be distinct relative stds in (0, 0.2887) (power-function EMA, "
                f"gamma > 0), e.g. [0.05, 0.10]; [] = off; got {t.ema_stds}",
            ),
            (t.ema_snapshot_every >= 1, f"train.ema_snapshot_every must be >= 1, got {t.ema_snapshot_every}"),
            (t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {t.grad_clip}"),
            (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}"),
            (t.ckpt_every >= 1, f"train.ckpt_every must be >= 1, got {t.ckpt_every}"),
            (t.keep_last >= 1, f"train.keep_last must be >= 1, got {t.keep_last}"),
            (t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}"),
            (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
            (
                0 <= t.beta1 < 1 and 0 <= t.beta2 < 1,
                f"train.beta1 and train.beta2 must be in [0, 1), got {t.beta1}, {t.beta2}",
            ),
            (0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}"),
        ]
    )
    if t.accum_steps < 1 or t.batch_size % t.accum_steps:
        raise ConfigError(
            f"train.accum_steps must be >= 1 and divide train.batch_size={t.batch_size}, got {t.accum_steps}"
        )
    lookup("optimizer", t.optimizer, OPTIMIZERS)
    lookup("learning-rate decay", t.decay, LR_SCHEDULES)
    lookup("precision", t.precision, dict.fromkeys(typing.get_args(Precision)))
    lookup("on_nan policy", t.on_nan, dict.fromkeys(typing.get_args(OnNan)))
    check_device_name(t.device)


DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def check_device_name(name: str, what: str = "train.device") -> None:
    """train.device (or `what`: a command's --device) is one of DEVICE_FORMS (whether this machine has
    it is checked by train.devices.resolve_device)."""
    kind, _, index = name.partition(":")
    if name in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit()):
        return
    near = closest(name, ["auto", "cpu", "cuda", "mps"])
    hint = f"; did you mean {' or '.join(repr(c) for c in near)}?" if near else ";"
    raise ConfigError(f"unknown {what} {name!r}{hint} choices: {DEVICE_FORMS}")


def check_model(m: ModelConfig) -> None:
    """model.*: the fields every network reads, the embedding name, then the architecture's own."""
    if not (m.emb_dim >= 2 and m.emb_dim % 2 == 0):
        raise ConfigError(f"model.emb_dim must be an even number >= 2, got {m.emb_dim}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    lookup("noise embedding", m.embedding, EMBEDDINGS)
    get_architecture(m.arch).check(m)


def check_diffusion(d: DiffusionConfig) -> NoiseProcess:
    """diffusion.*: builds the process and the loss (each checks its names and parameters)."""
    if not d.loss.sigma_data > 0:
        raise ConfigError(f"diffusion.loss.sigma_data must be > 0, got {d.loss.sigma_data}")
    process = make_process(d.process)
    DenoisingLoss(d.loss, process)  # the target, weighting and noise-sampling names
    return process


def check_sample(s: SampleConfig, process: NoiseProcess) -> None:
    """sample.*: counts, the sampler and grid names, and the sigma range against the process's."""
    _raise_first(
        [
            (s.steps >= 1, f"sample.steps must be >= 1, got {s.steps}"),
            (s.n >= 1, f"sample.n must be >= 1, got {s.n}"),
            (s.rho > 0, f"sample.rho must be > 0, got {s.rho}"),
        ]
    )
    get_sampler_spec(s.sampler)
    lookup("sigma grid", s.grid, GRIDS)
    check_sigma_bounds(s, process)


def check_sigma_bounds(s: SampleConfig, process: NoiseProcess) -> None:
    """Each bound is a number > 0 or None (the process's own); the range they give must increase."""
    for key in ("sigma_min", "sigma_max"):
        value = getattr(s, key)
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(
                f"sample.{key} must be a finite number > 0 (or left out: the process's own), got {value}"
            )
    lo = process.sigma_min if s.sigma_min is None else s.sigma_min
    hi = process.sigma_max if s.sigma_max is None else s.sigma_max
    if lo < hi:
        return
    message = f"need 0 < sample.sigma_min < sample.sigma_max, got {lo} and {hi}"
    if s.sigma_min is None or s.sigma_max is None:
        left_out = "sample.sigma_min" if s.sigma_min is None else "sample.sigma_max"
        message += (
            f" ({left_out} left out: the {process.name} process's own; its range is "
            f"{process.sigma_min:g} .. {process.sigma_max:g})"
        )
    raise ConfigError(message)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
