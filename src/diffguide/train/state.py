"""The training state: the weights, their EMA, the optimizer and the data generator, saved and restored.

Every random draw (data, noise levels, noise, label dropout) comes from one CPU generator whose state
is saved in each checkpoint with the weights, the EMA and the optimizer, so a resumed run continues
exactly as an uninterrupted one (the global RNG, used by dropout only, is reseeded each step from
(seed, step, rank) instead: see step.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffguide.config import RunConfig
from diffguide.errors import CheckpointError
from diffguide.optim import make_optimizer
from diffguide.train import distributed
from diffguide.train.checkpoint import (
    DIGEST_KEY,
    latest_good_checkpoint,
    load_module_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from diffguide.train.ema import EMA, PowerEMA


@dataclass
class TrainingState:
    """What a checkpoint holds: everything that changes from one training step to the next."""

    net: torch.nn.Module  # the bare network (not its DDP or torch.compile wrapper)
    ema: EMA
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # every draw of data, noise levels, noise and label dropout
    step: int = 0  # optimizer steps taken (skipped non-finite steps count)
    power_ema: PowerEMA | None = None  # EDM2's power-function EMAs (train.ema_stds), None when off


def new_training_state(cfg: RunConfig, net: torch.nn.Module) -> TrainingState:
    """The state at step 0: the config's optimizer (optim.OPTIMIZERS), an EMA of `net` (and its power-function
    EMAs if train.ema_stds names any), a seeded generator."""
    t = cfg.train
    optimizer = make_optimizer(
        t.optimizer, net.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay
    )
    power_ema = PowerEMA(net, t.ema_stds) if t.ema_stds else None
    generator = torch.Generator().manual_seed(t.seed + 1)
    return TrainingState(net, EMA(net, t.ema_decay), optimizer, generator, power_ema=power_ema)


def save_training_state(folder: Path, state: TrainingState, keep_last: int) -> Path:
    """Write the state as checkpoint `state.step` in `folder` (keeping the newest keep_last)."""
    tensors = {f"model.{k}": v for k, v in state.net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in state.ema.shadow.items()})
    opt_tensors, groups = optimizer_to_tensors(state.optimizer)
    tensors.update(opt_tensors)
    tensors["rng.generator"] = state.generator.get_state()
    meta = {"optimizer_groups": groups, "ema_decay": str(state.ema.decay)}
    if state.power_ema is not None:  # absent otherwise, so runs without it keep their exact files
        for i, shadow in enumerate(state.power_ema.shadows):
            tensors.update({f"power_ema{i}.{k}": v for k, v in shadow.items()})
        meta["ema_stds"] = state.power_ema.stds
    return save_checkpoint(folder, state.step, tensors, meta, keep_last)


def load_training_state(state: TrainingState, tensors: dict, meta: dict) -> None:
    """Restore `state` in place from a checkpoint's tensors and metadata (read_checkpoint's)."""
    load_module_tensors(state.net, tensors, "model.")
    for k in state.ema.shadow:
        state.ema.shadow[k].copy_(tensors[f"ema.{k}"])
    optimizer_from_tensors(state.optimizer, tensors, meta["optimizer_groups"])
    if state.power_ema is not None:
        _load_power_ema(state.power_ema, tensors)
    state.generator.set_state(tensors["rng.generator"])
    state.step = int(meta["step"])


def _load_power_ema(power_ema: PowerEMA, tensors: dict) -> None:
    for i, shadow in enumerate(power_ema.shadows):
        missing = [k for k in shadow if f"power_ema{i}.{k}" not in tensors]
        if missing:
            raise CheckpointError(
                f"the checkpoint has no power-function EMA {i} (train.ema_stds={power_ema.stds}): "
                f"missing power_ema{i}.{missing[0]}; it was written without train.ema_stds"
            )
        for k in shadow:
            shadow[k].copy_(tensors[f"power_ema{i}.{k}"])


def resume_training_state(
    state: TrainingState, folder: Path, info: distributed.DistInfo | None = None
) -> Path | None:
    """Load the newest good checkpoint in `folder` into `state`; its path, or None if there is none.

    Under torchrun every rank reads the folder itself (after DDP broadcast its weights), then all
    check they read the same checkpoint."""
    found = latest_good_checkpoint(folder)
    if found is not None:
        path, tensors, meta = found
        load_training_state(state, tensors, meta)
    check_same_checkpoint(found, distributed.DistInfo() if info is None else info)
    return found[0] if found is not None else None


def check_same_checkpoint(found, info: distributed.DistInfo) -> None:
    """Raise on every rank unless all resumed from the same checkpoint (same step and tensor digest).

    Ranks that disagree would train different models while DDP averages their gradients; this
    happens when --out is not on a filesystem every node shares. `found` is latest_good_checkpoint's."""
    if not info.enabled:
        return
    NONE, UNHASHED = -1, -2  # no checkpoint found; a checkpoint written before digests
    step = int(found[2]["step"]) if found else 0
    digest = found[2].get(DIGEST_KEY) if found else None
    mine = int(digest[:15], 16) if digest else (UNHASHED if found else NONE)
    ranks = distributed.all_gather_ints((step, mine), info)
    if len(set(ranks)) == 1:
        return

    def describe(s: int, d: int) -> str:
        return "no checkpoint" if d == NONE else f"step {s}" + (f" (sha256 {d:015x}...)" if d >= 0 else "")

    seen = ", ".join(f"rank {r}: {describe(s, d)}" for r, (s, d) in enumerate(ranks))
    here = repr(str(found[0])) if found else "no checkpoint"
    raise CheckpointError(
        f"the ranks resumed from different checkpoints ({seen}); this rank ({info.rank}) read {here}. "
        "Every rank reads --out itself: on several nodes it must be a folder all of them share"
    )
