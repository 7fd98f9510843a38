"""One training step: forward and backward over the accumulation micro-batches, gradient clipping, the
NaN/Inf policy, the optimizer step and the EMA updates."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffguide.config import TrainConfig
from diffguide.errors import DiffguideError
from diffguide.losses import DenoisingLoss
from diffguide.train import distributed
from diffguide.train.batches import Batch, to_device
from diffguide.train.state import TrainingState


class TrainingDiverged(DiffguideError):
    """The loss or the gradient became NaN or Inf (train.on_nan = "stop")."""

    def __init__(self, problem: str, step: int, checkpoints: Path | None = None):
        self.problem, self.step = problem, step
        kept = f"; the last good checkpoint in {checkpoints} is kept" if checkpoints is not None else ""
        super().__init__(
            f"{problem} at step {step}{kept}. Try a lower train.lr, or train.on_nan=skip to skip such steps"
        )


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar: the mean loss over the global batch (every rank's slice)
    grad_norm: torch.Tensor  # scalar: the gradient's norm before clipping
    problem: str | None = None  # why the update was skipped (train.on_nan = "skip"); None if applied

    @property
    def skipped(self) -> bool:
        return self.problem is not None


def non_finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> str | None:
    """What is wrong with a step ("loss is nan", "gradient norm is inf ..."), or None if all is finite."""
    if not torch.isfinite(loss):
        return f"loss is {loss.item()}"
    if not torch.isfinite(grad_norm):
        return f"gradient norm is {grad_norm.item()} (the loss, {loss.item():.4g}, is finite)"
    return None


def seed_dropout(seed: int, step: int, rank: int = 0) -> None:
    """Reseed the global RNG (used by dropout only) from (seed, step, rank): a resumed run and every
    rank reproduce their dropout masks without saving the global RNG's state."""
    torch.manual_seed(((seed * 1_000_003 + step) * 4096 + rank) % (2**63 - 1))


def train_step(
    state: TrainingState,
    batch: Batch,
    denoiser: Callable,
    loss_fn: DenoisingLoss,
    settings: TrainConfig,
    *,
    lr: float,
    model: torch.nn.Module | None = None,
    info: distributed.DistInfo | None = None,
) -> StepResult:
    """One optimizer step at learning rate `lr` on this rank's `batch`; advances `state.step` by one.

    denoiser: D(x, sigma, cond) calling `model`, the module whose gradients are synchronised (DDP's
    wrapper under torchrun; state.net when None). settings: train.accum_steps, grad_clip, on_nan,
    precision and seed (the global RNG, dropout's, is reseeded from it first). A non-finite loss or gradient norm on any rank raises TrainingDiverged
    (on_nan = "stop") or leaves the weights, the optimizer and the EMA untouched (on_nan = "skip")."""
    info = distributed.DistInfo() if info is None else info
    net, optimizer = state.net, state.optimizer
    seed_dropout(settings.seed, state.step, info.rank)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss = _accumulate_gradients(batch, denoiser, loss_fn, settings, net if model is None else model, info)
    # the norm clipping computes anyway also catches a finite loss with non-finite gradients (an
    # overflow in the backward pass, possible under bf16); DDP has averaged the gradients, so every
    # rank sees the same norm
    clip = settings.grad_clip if settings.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    problem = non_finite(loss, grad_norm)
    skipped = distributed.any_rank(problem is not None, info)
    problem = problem or "another rank's loss or gradient is not finite"
    if skipped and settings.on_nan == "stop":
        raise TrainingDiverged(problem, state.step + 1)
    if skipped:  # on_nan = skip: drop this step's update (optimizer and EMA untouched)
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
        state.ema.update(net, state.step + 1)
        if state.power_ema is not None:
            state.power_ema.update(net, state.step + 1)
    state.step += 1
    return StepResult(loss, grad_norm, problem if skipped else None)


def _accumulate_gradients(
    batch: Batch,
    denoiser: Callable,
    loss_fn: DenoisingLoss,
    settings: TrainConfig,
    model: torch.nn.Module,
    info: distributed.DistInfo,
) -> torch.Tensor:
    """Backward over settings.accum_steps micro-batches, each loss scaled so the gradients sum to the
    whole batch's mean; DDP synchronises on the last only. The mean loss over every rank's slice."""
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")
    total = torch.zeros((), device=device)
    for k, micro in enumerate(batch.micro_batches(settings.accum_steps)):
        last = k == settings.accum_steps - 1
        sync = contextlib.nullcontext() if last or not info.enabled else model.no_sync()
        with sync:
            with autocast:
                loss = loss_fn(
                    denoiser,
                    micro.x0.to(device),
                    to_device(micro.labels, device),
                    noise=(micro.sigma, micro.eps),
                ).mean()
            (loss / settings.accum_steps).backward()
        total += loss.detach() / settings.accum_steps
    return distributed.all_mean(total, info)
