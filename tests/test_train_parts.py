"""The training loop's parts against closed forms: the EMA with its warm-up decay, the learning-rate
schedules at their defining points, and Adam vs AdamW weight decay on a first step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffguide.config import apply_overrides, load_preset
from diffguide.optim import make_optimizer
from diffguide.train.ema import EMA
from diffguide.train.loop import lr_schedule


def lr_at(step: int, cfg) -> float:
    return lr_schedule(cfg.train)(step)


class Holder(nn.Module):
    """A float parameter and an integer buffer: the EMA averages the first and copies the second."""

    def __init__(self, value: float):
        super().__init__()
        self.theta = nn.Parameter(torch.full((3,), value, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0))


@pytest.mark.parametrize("n", [1, 7, 50])
def test_ema_warm_up_is_the_binomial_product(n):
    """With decay_k = (1 + k) / (10 + k) (the warm-up, uncapped when `decay` is larger), a shadow that
    starts at s0 and averages a constant theta is theta + (s0 - theta) prod_{k<n} decay_k, and
    prod_{k=0}^{n-1} (k + 1) / (k + 10) = n! 9! / (n + 9)! = 1 / C(n + 9, 9)."""
    net = Holder(0.0)
    ema = EMA(net, decay=0.9999)  # never reached in 50 steps: 50 / 59 < 0.9999
    with torch.no_grad():
        net.theta.fill_(1.0)
    net.count.fill_(n)
    for k in range(n):
        ema.update(net, k)
    expected = 1.0 - 1.0 / math.comb(n + 9, 9)  # theta = 1, s0 = 0
    torch.testing.assert_close(ema.shadow["theta"], torch.full((3,), expected, dtype=torch.float64))
    assert int(ema.shadow["count"]) == n  # integer state is copied, not averaged


def test_ema_decay_caps_the_warm_up():
    """decay = 0.5: decay_k = (1 + k) / (10 + k) until it passes 0.5 (k = 9 gives 10 / 19 > 0.5), then
    0.5 for good; the shadow's distance to a constant theta is the product of the decays used."""
    net = Holder(0.0)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.theta.fill_(2.0)
    n = 20
    for k in range(n):
        ema.update(net, k)
    product = math.factorial(9) * math.factorial(9) / math.factorial(18) * 0.5 ** (n - 9)  # k < 9, then 0.5
    torch.testing.assert_close(
        ema.shadow["theta"], torch.full((3,), 2.0 * (1 - product), dtype=torch.float64)
    )


def schedule(decay: str, **extra):
    sets = ["train.steps=110", "train.warmup_steps=10", "train.lr=0.02", f'train.decay="{decay}"']
    sets += [f"train.{k}={v}" for k, v in extra.items()]
    return apply_overrides(load_preset("tiny"), sets)


def test_linear_decay_reaches_the_floor_in_a_straight_line():
    """After warm-up, lr falls linearly from lr to min_lr_ratio * lr over the remaining 100 steps."""
    cfg = schedule("linear", min_lr_ratio=0.1)
    lr, floor = 0.02, 0.002
    for step, share in ((10, 0.0), (35, 0.25), (60, 0.5), (110, 1.0), (200, 1.0)):
        assert lr_at(step, cfg) == pytest.approx(lr - (lr - floor) * share, rel=1e-12), step


def test_inverse_sqrt_decay():
    """Inverse square root after warm-up (Vaswani et al.'s shape, rescaled to start at lr): lr at the end
    of warm-up, lr / 2 when 3 warm-ups have passed since, lr / 3 after 8."""
    cfg = schedule("inv-sqrt")
    assert lr_at(10, cfg) == pytest.approx(0.02, rel=1e-12)
    assert lr_at(10 + 3 * 10, cfg) == pytest.approx(0.01, rel=1e-12)
    assert lr_at(10 + 8 * 10, cfg) == pytest.approx(0.02 / 3, rel=1e-12)
    assert lr_at(5, cfg) == pytest.approx(0.02 * 6 / 10, rel=1e-12)  # warm-up: (step + 1) / warmup


def test_no_decay_is_constant_after_warm_up():
    cfg = schedule("none")
    assert {lr_at(s, cfg) for s in (10, 50, 109, 500)} == {0.02}


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_weight_decay_is_coupled_in_adam_and_decoupled_in_adamw(optimizer):
    """One step with a zero loss gradient, lr = 0.1, weight decay 0.5, theta = 2:
    AdamW (Loshchilov & Hutter 2019) shrinks theta by lr * wd * theta: 2 -> 2 (1 - 0.05) = 1.9;
    Adam adds wd * theta to the gradient, and Adam's first bias-corrected step is lr * g / (|g| + eps),
    so theta -> 2 - 0.1 = 1.9 as well here, but it does not scale with theta: theta = 20 gives 19.9
    (Adam) against 19.0 (AdamW)."""
    cfg = apply_overrides(
        load_preset("tiny"), [f'train.optimizer="{optimizer}"', "train.lr=0.1", "train.weight_decay=0.5"]
    )
    for start, adam, adamw in ((2.0, 1.9, 1.9), (20.0, 19.9, 19.0)):
        theta = nn.Parameter(torch.tensor([start], dtype=torch.float64))
        t = cfg.train
        opt = make_optimizer(
            t.optimizer, [theta], lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay
        )
        assert type(opt) is (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)
        theta.grad = torch.zeros_like(theta)
        opt.step()
        expected = adamw if optimizer == "adamw" else adam
        assert theta.item() == pytest.approx(expected, abs=1e-6), (start, theta.item())
