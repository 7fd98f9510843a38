"""The training loop: one function, resumable bit for bit on the CPU.

Every random draw (data, noise levels, noise, label dropout) comes from one CPU generator whose state
is saved in each checkpoint together with the global RNG (dropout), the optimizer and the EMA, so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import warnings
from pathlib import Path

import torch

from diffguide.config import RunConfig, from_dict, to_dict, validate
from diffguide.data import make_dataset
from diffguide.data.files import keep_data_file
from diffguide.errors import CheckpointError, ConfigError, DiffguideError, output_error
from diffguide.io import atomic_write_text
from diffguide.losses import DenoisingLoss
from diffguide.models.build import build_denoiser, build_network
from diffguide.processes import make_process
from diffguide.train import distributed
from diffguide.train.checkpoint import (
    DIGEST_KEY,
    latest_good_checkpoint,
    load_module_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from diffguide.train.logs import RunLogger


class TrainingDiverged(DiffguideError):
    """The loss or the gradient became NaN or Inf."""


def non_finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> str | None:
    """What is wrong with a step ("loss is nan", "gradient norm is inf ..."), or None if all is finite."""
    if not torch.isfinite(loss):
        return f"loss is {loss.item()}"
    if not torch.isfinite(grad_norm):
        return f"gradient norm is {grad_norm.item()} (the loss, {loss.item():.4g}, is finite)"
    return None


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


BF16_ON_SLOW_CPU = (
    "train.precision=bf16 on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): bf16 is emulated "
    "there and was measured 8 to 20 times slower than fp32 (benchmarks/results/training.md); "
    "use train.precision=fp32 on this machine"
)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); True if torch cannot tell
    (the checks are private torch functions, so a later torch may not have them)."""
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    checks = [getattr(torch.cpu, name) for name in names if callable(getattr(torch.cpu, name, None))]
    return not checks or any(check() for check in checks)


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
        with contextlib.suppress(ConfigError):  # keys added since the run was saved take their defaults
            saved = to_dict(from_dict(RunConfig, saved))
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
        keep_data_file(cfg.data, run_dir)
    except OSError as e:
        raise output_error(run_dir, e) from None
    return run_dir


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_log=None,
    on_finish=None,
) -> Path:
    """Train the model a config describes into `run_dir` (resuming from its latest checkpoint if asked).

    Under torchrun each process trains on its slice of the same global batch (see distributed.py);
    rank 0 alone writes checkpoints and logs.
    stop_after: stop once this step is reached (checkpointing it), as if interrupted; used by tests.
    on_log: optional function called with each logged record (the dashboard's live progress).
    on_finish: optional function called on every rank with (net, ema) when the loop ends.
    """
    cfg = validate(cfg)
    t = cfg.train
    info = distributed.setup(resolve_device(t.device))
    device = distributed.local_device(resolve_device(t.device), info)
    run_dir = Path(run_dir)
    if t.batch_size % (info.world_size * t.accum_steps):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by processes x accum_steps "
            f"= {info.world_size} x {t.accum_steps}"
        )
    dataset = make_dataset(cfg.data)  # before the run folder: missing data files leave nothing behind
    if info.is_main:
        prepare_run_dir(cfg, run_dir, resume)
    distributed.barrier(info)
    torch.manual_seed(t.seed)
    net = build_network(cfg, dataset).to(device)
    if t.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if t.compile:
        model = torch.compile(model)
    denoiser = build_denoiser(cfg, model)
    loss_fn = DenoisingLoss(cfg.diffusion.loss, make_process(cfg.diffusion.process))
    optimizer = _make_optimizer(cfg, net.parameters())
    ema = EMA(net, t.ema_decay)
    generator = torch.Generator().manual_seed(t.seed + 1)
    step = 0

    ckpt_dir = run_dir / "checkpoints"
    if resume:
        found = latest_good_checkpoint(ckpt_dir)
        if found is not None:
            path, tensors, meta = found
            step = load_training_state(tensors, meta, net, ema, optimizer, generator)
            if info.is_main:
                print(f"resuming {run_dir} from {path.name} (step {step})")
        # each rank read the folder itself (after DDP broadcast its weights): make sure they read the same
        check_same_checkpoint(found, info)

    logger = RunLogger(run_dir, step, t.steps, progress) if info.is_main else None
    stop_request = _StopOnSignal()
    num_classes = dataset.num_classes if cfg.data.conditional else 0
    if t.precision == "bf16" and device.type == "cpu" and info.is_main and not cpu_has_bf16():
        warnings.warn(BF16_ON_SLOW_CPU, stacklevel=2)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    net.train()
    try:
        while step < t.steps:
            # the global RNG (dropout only) is reseeded from (seed, step, rank) every step: resume and
            # every rank are reproducible without saving its state
            torch.manual_seed(((t.seed * 1_000_003 + step) * 4096 + info.rank) % (2**63 - 1))
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # the global batch and its noise, drawn identically on every rank, then this rank's slice
            x0, labels = dataset.sample_batch(t.batch_size, generator)
            labels = drop_condition(labels, num_classes, t.p_uncond, generator) if num_classes else None
            sigma, eps = loss_fn.draw_noise(x0, generator)
            x0, labels, sigma, eps = (distributed.shard(v, info) for v in (x0, labels, sigma, eps))
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            micro = x0.shape[0] // t.accum_steps
            for k in range(t.accum_steps):
                part = slice(k * micro, (k + 1) * micro)
                last = k == t.accum_steps - 1
                sync = contextlib.nullcontext() if last or not info.enabled else model.no_sync()
                with sync:
                    with autocast:
                        loss = loss_fn(
                            denoiser,
                            x0[part].to(device),
                            _to(select(labels, part), device),
                            noise=(sigma[part], eps[part]),
                        ).mean()
                    (loss / t.accum_steps).backward()
                total += loss.detach() / t.accum_steps
            loss_value = distributed.all_mean(total, info)
            # the norm clipping computes anyway also catches a finite loss with non-finite gradients
            # (an overflow in the backward pass, possible under bf16); DDP has averaged the gradients,
            # so every rank sees the same norm
            clip = t.grad_clip if t.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            problem = non_finite(loss_value, grad_norm)
            skipped = distributed.any_rank(problem is not None, info)
            problem = problem or "another rank's loss or gradient is not finite"
            if skipped and t.on_nan == "stop":
                raise TrainingDiverged(
                    f"{problem} at step {step + 1}; the last good checkpoint in "
                    f"{ckpt_dir} is kept. Try a lower train.lr, or train.on_nan=skip to skip such steps"
                )
            if skipped:  # on_nan = skip: drop this step's update (optimizer and EMA untouched)
                optimizer.zero_grad(set_to_none=True)
                if logger is not None:
                    print(f"step {step + 1}: {problem}, step skipped (train.on_nan=skip)")
            else:
                optimizer.step()
                ema.update(net, step + 1)
            step += 1
            if logger is not None and not skipped and (step % t.log_every == 0 or step == t.steps):
                record = {"loss": loss_value.item(), "lr": lr, "grad_norm": float(grad_norm)}
                logger.log(step, record, t.batch_size)
                if on_log is not None:
                    on_log({"step": step, "total": t.steps, **record})
            stopping = (stop_after is not None and step >= stop_after) or distributed.any_rank(
                stop_request.requested, info
            )
            if step % t.ckpt_every == 0 or step == t.steps or stopping:
                if info.is_main:
                    save_training_state(ckpt_dir, step, net, ema, optimizer, generator, cfg)
                distributed.barrier(info)
            if stopping:
                break
    except torch.OutOfMemoryError:
        raise DiffguideError(
            f"out of memory on {device} with train.batch_size={t.batch_size}; try a smaller batch, e.g. "
            f"--set train.batch_size={max(1, t.batch_size // 2)}, or --set train.accum_steps={2 * t.accum_steps}"
        ) from None
    finally:
        stop_request.restore()
        if logger is not None:
            logger.close()
    if stop_request.requested and info.is_main:
        print(f"stopped at step {step} (checkpoint kept); continue with --resume")
    if on_finish is not None:
        on_finish(net, ema)
    distributed.barrier(info)
    return run_dir


class _StopOnSignal:
    """SIGTERM/SIGINT ask the loop to stop after the current step, checkpoint it and return."""

    def __init__(self):
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def select(labels, part: slice):
    if labels is None:
        return None
    if isinstance(labels, dict):
        return {k: v[part] for k, v in labels.items()}
    return labels[part]


def _to(labels, device):
    if labels is None:
        return None
    if isinstance(labels, dict):
        return {k: v.to(device) for k, v in labels.items()}
    return labels.to(device)


def drop_condition(labels, num_classes: int, p: float, generator: torch.Generator):
    """Label dropout for any condition: class labels here, attribute dicts via data.attributes."""
    if isinstance(labels, dict):
        from diffguide.data.attributes import drop_attributes

        return drop_attributes(labels, p, generator)
    return drop_labels(labels, num_classes, p, generator)


def save_training_state(folder, step, net, ema, optimizer, generator, cfg) -> Path:
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    opt_tensors, groups = optimizer_to_tensors(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.generator"] = generator.get_state()
    meta = {"optimizer_groups": groups, "ema_decay": str(ema.decay)}
    return save_checkpoint(folder, step, tensors, meta, cfg.train.keep_last)


def load_training_state(tensors, meta, net, ema, optimizer, generator) -> int:
    load_module_tensors(net, tensors, "model.")
    for k in ema.shadow:
        ema.shadow[k].copy_(tensors[f"ema.{k}"])
    optimizer_from_tensors(optimizer, tensors, meta["optimizer_groups"])
    generator.set_state(tensors["rng.generator"])
    return int(meta["step"])
