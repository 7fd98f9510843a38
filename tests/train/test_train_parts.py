"""The training loop's parts against closed forms: the EMA with its warm-up decay, the learning-rate
schedules at their defining points, and Adam vs AdamW weight decay on a first step; the optimizer and
schedule registries (diffguide.optim), and train()'s pieces called on their own: one draw_batch and
train_step against the step written out by hand, the NaN policy on one step, the state's checkpoint
round trip, the signal handler."""

from __future__ import annotations

import ast
import copy
import math
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import diffguide.optim
from diffguide.config import apply_overrides, load_preset
from diffguide.data import make_dataset
from diffguide.errors import ConfigError
from diffguide.losses import DenoisingLoss
from diffguide.models.build import build_denoiser, build_network
from diffguide.optim import LR_SCHEDULES, OPTIMIZERS, make_lr_schedule, make_optimizer
from diffguide.processes import make_process
from diffguide.train.batches import draw_batch
from diffguide.train.ema import EMA
from diffguide.train.loop import lr_schedule
from diffguide.train.signals import StopOnSignal
from diffguide.train.state import new_training_state, resume_training_state, save_training_state
from diffguide.train.step import TrainingDiverged, train_step


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


# ---------------------------------------------------------------------------------------------
# the registries in diffguide.optim: every name builds what it says


def closed_form_lr(decay: str, step: int, lr: float, warmup: int, total: int, floor_ratio: float) -> float:
    """Each schedule written another way: warm-up (step + 1) / warmup; cosine as a squared cosine,
    0.5 (1 + cos(pi p)) = cos^2(pi p / 2); inv-sqrt as lr sqrt(warmup / step) (the rescaled
    1 / sqrt(step) of Vaswani et al.)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / (total - warmup))
    floor = floor_ratio * lr
    return {
        "none": lr,
        "cosine": floor + (lr - floor) * math.cos(math.pi * p / 2) ** 2,
        "linear": lr - (lr - floor) * p,
        "inv-sqrt": lr * math.sqrt(warmup / step) if warmup else lr / math.sqrt(step + 1),
    }[decay]


def test_every_lr_schedule_has_a_closed_form_here():
    """A schedule added to the registry without a closed form in this test file fails here."""
    assert set(LR_SCHEDULES) == {"none", "cosine", "linear", "inv-sqrt"}


@pytest.mark.parametrize("decay", sorted(LR_SCHEDULES))
@pytest.mark.parametrize("warmup", [0, 20])
def test_lr_schedule_matches_its_closed_form(decay, warmup):
    lr, total, floor_ratio = 3e-3, 220, 0.1
    schedule = make_lr_schedule(decay, lr, warmup_steps=warmup, total_steps=total, min_lr_ratio=floor_ratio)
    for step in (0, 1, 7, 19, 20, 21, 70, 120, 219, 220, 500):
        expected = closed_form_lr(decay, step, lr, warmup, total, floor_ratio)
        assert schedule(step) == pytest.approx(expected, rel=1e-12), (decay, warmup, step)
    assert schedule(warmup) == pytest.approx(lr, rel=1e-12)  # every schedule starts its decay at lr


def test_unknown_lr_schedule_names_the_closest():
    with pytest.raises(ConfigError, match=r"unknown learning-rate decay 'cosin'; did you mean 'cosine'"):
        make_lr_schedule("cosin", 1e-3, warmup_steps=0, total_steps=10, min_lr_ratio=0.0)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_its_class_with_the_given_settings(name):
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    assert set(OPTIMIZERS) == set(expected)  # a new entry needs its class here
    theta = nn.Parameter(torch.zeros(2))
    opt = make_optimizer(name, [theta], lr=0.25, betas=(0.8, 0.95), weight_decay=0.125)
    assert type(opt) is expected[name]
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.25, (0.8, 0.95), 0.125)
    assert group["params"] == [theta]


def test_unknown_optimizer_names_the_closest():
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adamx'; did you mean 'adam' or 'adamw'\?"):
        make_optimizer("adamx", [nn.Parameter(torch.zeros(1))], lr=0.1, betas=(0.9, 0.999), weight_decay=0)
    with pytest.raises(ConfigError, match="choices: adam, adamw"):
        make_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1, betas=(0.9, 0.999), weight_decay=0)


def test_optim_imports_neither_config_nor_train():
    """diffguide.optim is for config's validation to import: it may import only torch, the standard
    library and diffguide.errors (config imports optim; train imports config)."""
    tree = ast.parse(Path(diffguide.optim.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    ours = {name for name in imported if name.split(".")[0] == "diffguide"}
    assert ours == {"diffguide.errors"}, ours
    assert {name.split(".")[0] for name in imported} <= {
        "__future__",
        "math",
        "collections",
        "typing",
        "torch",
        "diffguide",
    }


# ---------------------------------------------------------------------------------------------
# train()'s pieces on their own


def tiny_parts(extra=()):
    """The tiny preset's config, data, MLP, denoiser and loss, as train() builds them."""
    cfg = apply_overrides(load_preset("tiny"), ["train.device=cpu", "train.p_uncond=0.3", *extra])
    dataset = make_dataset(cfg.data)
    torch.manual_seed(0)
    net = build_network(cfg, dataset)
    loss_fn = DenoisingLoss(cfg.diffusion.loss, make_process(cfg.diffusion.process))
    return cfg, dataset, net, loss_fn


def test_draw_batch_and_train_step_equal_a_hand_written_step():
    """One draw_batch + train_step equals the step written out with torch: the same generator draws
    (data, label dropout, noise), one backward, clipping, Adam, the EMA at step 1: bit for bit."""
    cfg, dataset, net, loss_fn = tiny_parts()
    t = cfg.train
    hand_net = copy.deepcopy(net)
    state = new_training_state(cfg, net)
    batch = draw_batch(
        dataset, loss_fn, state.generator, 64, num_classes=dataset.num_classes, p_uncond=t.p_uncond
    )
    result = train_step(state, batch, build_denoiser(cfg, net), loss_fn, t, lr=0.01)

    generator = torch.Generator().manual_seed(t.seed + 1)
    x0, labels = dataset.sample_batch(64, generator)
    labels = torch.where(torch.rand(64, generator=generator) < t.p_uncond, dataset.num_classes, labels)
    sigma, eps = loss_fn.draw_noise(x0, generator)
    for drawn, by_hand in ((batch.x0, x0), (batch.labels, labels), (batch.sigma, sigma), (batch.eps, eps)):
        assert torch.equal(drawn, by_hand)
    optimizer = torch.optim.Adam(hand_net.parameters(), lr=0.01, betas=(t.beta1, t.beta2))
    ema = EMA(hand_net, t.ema_decay)
    loss = loss_fn(build_denoiser(cfg, hand_net), x0, labels, noise=(sigma, eps)).mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(hand_net.parameters(), t.grad_clip)
    optimizer.step()
    ema.update(hand_net, 1)

    assert state.step == 1 and not result.skipped
    assert torch.equal(result.loss, loss.detach()) and torch.equal(result.grad_norm, grad_norm)
    for (name, value), hand in zip(net.state_dict().items(), hand_net.state_dict().values(), strict=True):
        assert torch.equal(value, hand), name
        assert torch.equal(state.ema.shadow[name], ema.shadow[name]), name


@pytest.mark.parametrize("on_nan", ["skip", "stop"])
def test_train_step_on_a_nan_batch(on_nan):
    """A NaN loss: on_nan=skip leaves weights, optimizer and EMA untouched but counts the step;
    on_nan=stop raises TrainingDiverged naming the step."""
    cfg, dataset, net, loss_fn = tiny_parts([f'train.on_nan="{on_nan}"'])
    state = new_training_state(cfg, net)
    state.step = 6
    before = copy.deepcopy(net.state_dict())
    batch = draw_batch(dataset, loss_fn, state.generator, 32)
    batch.x0[3, 0] = float("nan")
    if on_nan == "stop":
        with pytest.raises(TrainingDiverged, match=r"loss is nan at step 7\. Try a lower train.lr"):
            train_step(state, batch, build_denoiser(cfg, net), loss_fn, cfg.train, lr=0.01)
        return
    result = train_step(state, batch, build_denoiser(cfg, net), loss_fn, cfg.train, lr=0.01)
    assert result.skipped and result.problem == "loss is nan"
    assert state.step == 7 and state.optimizer.state == {}
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in state.ema.shadow.items())


def test_training_state_round_trips_through_a_checkpoint(tmp_path):
    """save_training_state, then resume_training_state into a state built from other weights: the
    weights, EMA, optimizer moments, generator and step all come back."""
    cfg, dataset, net, loss_fn = tiny_parts()
    state = new_training_state(cfg, net)
    assert resume_training_state(state, tmp_path / "none") is None and state.step == 0
    for _ in range(3):
        batch = draw_batch(
            dataset, loss_fn, state.generator, 32, num_classes=dataset.num_classes, p_uncond=0.3
        )
        train_step(state, batch, build_denoiser(cfg, net), loss_fn, cfg.train, lr=0.01)
    path = save_training_state(tmp_path, state, keep_last=2)

    torch.manual_seed(1)
    other = new_training_state(cfg, build_network(cfg, dataset))
    assert resume_training_state(other, tmp_path) == path and other.step == 3
    for name, value in net.state_dict().items():
        assert torch.equal(other.net.state_dict()[name], value), name
        assert torch.equal(other.ema.shadow[name], state.ema.shadow[name]), name
    saved, loaded = state.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert sorted(saved) == sorted(loaded) == list(range(len(list(net.parameters()))))
    for index, moments in saved.items():
        assert all(torch.equal(loaded[index][key], value) for key, value in moments.items()), index
    assert torch.equal(other.generator.get_state(), state.generator.get_state())


def test_stop_on_signal_asks_once_then_interrupts():
    """The first SIGINT only sets `requested` (the loop checkpoints and returns); a second raises
    KeyboardInterrupt; restore() puts the previous handler back."""
    previous = signal.getsignal(signal.SIGINT)
    stop = StopOnSignal()
    try:
        assert not stop.requested
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is previous


def test_constant_lr_run_stopped_at_k_is_the_k_step_run(tmp_path):
    """With decay "none", nothing depends on train.steps: the checkpoint at step k of a longer run is the
    k-step run, bit for bit (what lets one long run give a learning curve of the punks preset)."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train
    from diffguide.train.checkpoint import list_checkpoints

    sets = ["train.decay=none", "train.warmup_steps=4", "train.ckpt_every=10", "train.keep_last=10"]
    long_dir = train(
        apply_overrides(load_preset("tiny"), [*sets, "train.steps=30"]), tmp_path / "l", progress=False
    )
    short_dir = train(
        apply_overrides(load_preset("tiny"), [*sets, "train.steps=10"]), tmp_path / "s", progress=False
    )
    at10 = {p.name: p for p in list_checkpoints(long_dir / "checkpoints")}["ckpt-00000010.safetensors"]
    short = list_checkpoints(short_dir / "checkpoints")[-1]
    from safetensors.torch import load_file

    a, b = load_file(at10), load_file(short)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same with the cosine decay differs (its learning rate depends on train.steps): the test can fail
    cos = [s for s in sets if "decay" not in s]
    cos_long = train(
        apply_overrides(load_preset("tiny"), [*cos, "train.steps=30"]), tmp_path / "cl", progress=False
    )
    c = load_file(
        {p.name: p for p in list_checkpoints(cos_long / "checkpoints")}["ckpt-00000010.safetensors"]
    )
    cos_short = train(
        apply_overrides(load_preset("tiny"), [*cos, "train.steps=10"]), tmp_path / "cs", progress=False
    )
    d = load_file(list_checkpoints(cos_short / "checkpoints")[-1])
    assert not all(torch.equal(c[k], d[k]) for k in c)
