"""Optimizers and learning-rate schedules as registries: a name in the config -> a factory.

`OPTIMIZERS` builds a torch optimizer from its name (`train.optimizer`), `LR_SCHEDULES` a function
step -> learning rate from its decay name (`train.decay`). One table per choice, for construction
(train/) and validation alike: this module sits at the top, importing only torch and diffguide.errors,
so that config can read the tables without importing the train package (which imports config).

Every schedule starts with the same linear warm-up, lr * (step + 1) / warmup_steps for the first
warmup_steps steps (Goyal et al. 2017), then decays from lr to its floor min_lr_ratio * lr over the
remaining total_steps - warmup_steps steps (inv-sqrt has no floor: it never ends).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch

from diffguide.errors import lookup

LRSchedule = Callable[[int], float]  # step (0-based) -> learning rate


def _with_warmup(lr: float, warmup_steps: int, after: LRSchedule) -> LRSchedule:
    """Linear warm-up to lr over warmup_steps steps, then `after`."""

    def schedule(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        return after(step)

    return schedule


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """Share of the decay phase done at `step`: 0 at the end of warm-up, 1 at total_steps (then more)."""
    return (step - warmup_steps) / max(1, total_steps - warmup_steps)


def constant_lr(lr: float, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> LRSchedule:
    """Warm-up, then lr for good (decay "none"; total_steps and min_lr_ratio are unused)."""
    return _with_warmup(lr, warmup_steps, lambda step: lr)


def cosine_lr(lr: float, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> LRSchedule:
    """Warm-up, then half a cosine from lr to min_lr_ratio * lr (Loshchilov & Hutter 2017, no restarts)."""
    floor = min_lr_ratio

    def decay(step: int) -> float:
        progress = _progress(step, warmup_steps, total_steps)
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    return _with_warmup(lr, warmup_steps, decay)


def linear_lr(lr: float, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> LRSchedule:
    """Warm-up, then a straight line from lr to min_lr_ratio * lr at total_steps."""
    floor = min_lr_ratio

    def decay(step: int) -> float:
        progress = _progress(step, warmup_steps, total_steps)
        return lr * (floor + (1 - floor) * (1 - min(progress, 1.0)))

    return _with_warmup(lr, warmup_steps, decay)


def inverse_sqrt_lr(lr: float, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> LRSchedule:
    """Warm-up, then lr / sqrt(1 + (step - warmup_steps) / warmup_steps) (Vaswani et al. 2017's shape,
    rescaled to start at lr; no floor, total_steps unused)."""

    def decay(step: int) -> float:
        return lr / math.sqrt(max(1.0, (step - warmup_steps) / max(1, warmup_steps) + 1))

    return _with_warmup(lr, warmup_steps, decay)


LR_SCHEDULES: dict[str, Callable[..., LRSchedule]] = {
    "none": constant_lr,
    "cosine": cosine_lr,
    "linear": linear_lr,
    "inv-sqrt": inverse_sqrt_lr,
}
ScheduleName = Literal["none", "cosine", "linear", "inv-sqrt"]  # the keys of LR_SCHEDULES


def make_lr_schedule(
    decay: str, lr: float, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LRSchedule:
    """The schedule LR_SCHEDULES names `decay`; an unknown name raises ConfigError naming the closest."""
    factory = lookup("learning-rate decay", decay, LR_SCHEDULES)
    return factory(lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)


Params = Iterable[torch.nn.Parameter]


def adam(
    params: Params, *, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015); weight decay is added to the gradient (L2, coupled)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def adamw(
    params: Params, *, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019); weight decay shrinks the weights apart from the gradient."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adam": adam, "adamw": adamw}
OptimizerName = Literal["adam", "adamw"]  # the keys of OPTIMIZERS


def make_optimizer(
    name: str, params: Params, *, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer OPTIMIZERS names; an unknown name raises ConfigError naming the closest."""
    return lookup("optimizer", name, OPTIMIZERS)(params, lr=lr, betas=betas, weight_decay=weight_decay)
