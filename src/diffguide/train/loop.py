"""The training loop: one function, resumable bit for bit on the CPU.

Every random draw (data, noise levels, noise, label dropout) comes from one CPU generator whose state
is saved in each checkpoint together with the global RNG (dropout), the optimizer and the EMA, so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..build import build_denoiser, build_network
from ..config import RunConfig, to_dict, validate
from ..data import make_dataset
from ..errors import CheckpointError, DiffguideError
from ..losses import DenoisingLoss
from ..processes import make_process
from .checkpoint import (
    atomic_write_text,
    latest_good_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from .logs import RunLogger


class TrainingDiverged(DiffguideError):
    """The loss became NaN or Inf."""


def lr_at(step: int, cfg) -> float:
    """Learning rate at `step`: linear warm-up, then none / cosine / linear / inverse-sqrt decay."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    floor = t.min_lr_ratio
    if t.decay == "cosine":
        return t.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    if t.decay == "linear":
        return t.lr * (floor + (1 - floor) * (1 - min(progress, 1.0)))
    if t.decay == "inv-sqrt":
        return t.lr / math.sqrt(max(1.0, (step - t.warmup_steps) / max(1, t.warmup_steps) + 1))
    return t.lr


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def drop_labels(labels, num_classes: int, p: float, generator: torch.Generator):
    """Replace each label by the null class `num_classes` with probability p, per sample."""
    if labels is None or p <= 0:
        return labels
    drop = torch.rand(labels.shape[0], generator=generator) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


class EMA:
    """Exponential moving average of a module's floating-point state (Polyak averaging)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - d)
            else:
                self.shadow[k].copy_(v)


def _make_optimizer(cfg: RunConfig, params):
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> Path:
    """Create the run folder and write config.json; refuse to overwrite a different run."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        saved = json.loads(cfg_path.read_text())
        if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise CheckpointError(
                f"run folder {str(run_dir)!r} already holds checkpoints; pass --resume to continue it "
                "or choose another --out"
            )
        if resume and saved != to_dict(cfg):
            changed = sorted(k for k in saved if saved[k] != to_dict(cfg).get(k))
            raise CheckpointError(
                f"cannot resume {str(run_dir)!r}: the config differs from the saved one in {changed}"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, json.dumps(to_dict(cfg), indent=2) + "\n")
    except OSError as e:
        raise CheckpointError(f"cannot write to run folder {str(run_dir)!r}: {e.strerror}") from None
    return run_dir


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_log=None,
) -> Path:
    """Train the model a config describes into `run_dir` (resuming from its latest checkpoint if asked).

    stop_after: stop once this step is reached (checkpointing it), as if interrupted; used by tests.
    on_log: optional function called with each logged record (the dashboard's live progress).
    """
    cfg = validate(cfg)
    run_dir = prepare_run_dir(cfg, Path(run_dir), resume)
    t = cfg.train
    device = resolve_device(t.device)
    dataset = make_dataset(cfg.data)
    torch.manual_seed(t.seed)
    net = build_network(cfg, dataset).to(device)
    denoiser = build_denoiser(cfg, net)
    loss_fn = DenoisingLoss(cfg.diffusion.loss, make_process(cfg.diffusion.process))
    optimizer = _make_optimizer(cfg, net.parameters())
    ema = EMA(net, t.ema_decay)
    generator = torch.Generator().manual_seed(t.seed + 1)
    torch.manual_seed(t.seed + 2)  # global RNG: dropout only
    step = 0

    ckpt_dir = run_dir / "checkpoints"
    if resume:
        found = latest_good_checkpoint(ckpt_dir)
        if found is not None:
            path, tensors, meta = found
            step = load_training_state(tensors, meta, net, ema, optimizer, generator)
            print(f"resuming {run_dir} from {path.name} (step {step})")

    logger = RunLogger(run_dir, step, t.steps, progress)
    num_classes = dataset.num_classes if cfg.data.conditional else 0
    net.train()
    try:
        while step < t.steps:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x0, labels = dataset.sample_batch(t.batch_size, generator)
            if num_classes:
                labels = drop_labels(labels, num_classes, t.p_uncond, generator).to(device)
            else:
                labels = None
            loss = loss_fn(denoiser, x0.to(device), labels, generator).mean()
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at step {step + 1}; the last good checkpoint in {ckpt_dir} is kept. "
                    "Try a lower train.lr or train.grad_clip=1"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                net.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf
            )
            optimizer.step()
            step += 1
            ema.update(net, step)
            if step % t.log_every == 0 or step == t.steps:
                record = {"loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm)}
                logger.log(step, record, t.batch_size)
                if on_log is not None:
                    on_log({"step": step, "total": t.steps, **record})
            stopping = stop_after is not None and step >= stop_after
            if step % t.ckpt_every == 0 or step == t.steps or stopping:
                save_training_state(ckpt_dir, step, net, ema, optimizer, generator, cfg)
            if stopping:
                break
    finally:
        logger.close()
    if step >= t.steps:
        from ..figures import write_run_figure

        write_run_figure(run_dir)
    return run_dir


def save_training_state(folder, step, net, ema, optimizer, generator, cfg) -> Path:
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    opt_tensors, groups = optimizer_to_tensors(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.global"] = torch.get_rng_state()
    meta = {"optimizer_groups": groups, "ema_decay": str(ema.decay)}
    return save_checkpoint(folder, step, tensors, meta, cfg.train.keep_last)


def load_training_state(tensors, meta, net, ema, optimizer, generator) -> int:
    load_module_tensors(net, tensors, "model.")
    for k in ema.shadow:
        ema.shadow[k].copy_(tensors[f"ema.{k}"])
    optimizer_from_tensors(optimizer, tensors, meta["optimizer_groups"])
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.global"])
    return int(meta["step"])


def load_module_tensors(module: torch.nn.Module, tensors: dict, prefix: str) -> None:
    """Load `prefix`-named tensors into a module; mismatches raise naming the tensors involved."""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if shape:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shape[:5]
                )
            )
        raise CheckpointError(
            "checkpoint does not fit this architecture ("
            + "; ".join(parts)
            + "); was it written by another config?"
        )
    module.load_state_dict(state)
