"""The training loop: train() builds a run's parts, then calls one named step after another.

A step draws its batch (batches.py) and trains on it (step.py); the state it changes (weights, EMA,
optimizer, generator) is saved and resumed in state.py, resumable bit for bit on the CPU.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffguide.config import RunConfig, TrainConfig, validate
from diffguide.data import Dataset, make_dataset
from diffguide.errors import ConfigError, DiffguideError
from diffguide.losses import DenoisingLoss
from diffguide.mixtures import GaussianMixture
from diffguide.models.build import build_denoiser, build_network
from diffguide.optim import LRSchedule, make_lr_schedule
from diffguide.processes import make_process
from diffguide.train import distributed
from diffguide.train.batches import draw_batch
from diffguide.train.checkpoint import checkpoint_name
from diffguide.train.devices import BF16_ON_SLOW_CPU, cpu_has_bf16, resolve_device
from diffguide.train.lock import run_lock
from diffguide.train.logs import RunLogger
from diffguide.train.run_folder import prepare_run_dir
from diffguide.train.signals import StopOnSignal, TrainingInterrupted
from diffguide.train.snapshots import SNAPSHOT_FOLDER, remove_snapshots_after, save_snapshot
from diffguide.train.state import (
    TrainingState,
    new_training_state,
    resume_training_state,
    save_training_state,
)
from diffguide.train.step import StepResult, TrainingDiverged, train_step


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_log: Callable[[dict], None] | None = None,
    on_finish: Callable | None = None,
) -> Path:
    """Train the model a config describes into `run_dir` (resuming from its latest checkpoint if asked).

    Under torchrun each process trains on its slice of the same global batch (see distributed.py);
    rank 0 alone writes checkpoints and logs.
    stop_after: stop once this step is reached (checkpointing it), as if interrupted; used by tests.
    on_log: optional function called with each logged record (the dashboard's live progress).
    on_finish: optional function called on every rank with (net, ema) when the loop ends.
    SIGINT/SIGTERM: the step reached is checkpointed, then TrainingInterrupted is raised (never a
    normal return). Resuming a run whose checkpoint already reached train.steps prints so and
    returns without writing anything. A run folder another process trains into is refused (RunInUse;
    see lock.py).
    """
    cfg = validate(cfg)
    t = cfg.train
    info = distributed.setup(resolve_device(t.device))
    device = distributed.local_device(resolve_device(t.device), info)
    check_batch_split(t, info)
    dataset = make_dataset(cfg.data)  # before the run folder: missing data files leave nothing behind
    exact = exact_denoiser(cfg, dataset, device)
    run_dir = Path(run_dir)
    with run_lock(run_dir, enabled=info.is_main):  # one process trains into a run folder at a time
        return _train_locked(
            cfg, run_dir, resume, info, device, dataset, exact, progress, stop_after, on_log, on_finish
        )


def _train_locked(
    cfg, run_dir, resume, info, device, dataset, exact, progress, stop_after, on_log, on_finish
) -> Path:
    """train() once the run folder is ours: prepare it, build the model, resume, run the steps."""
    t = cfg.train
    if info.is_main:
        prepare_run_dir(cfg, run_dir, resume, dataset)
    distributed.barrier(info)
    net, model = build_model(cfg, dataset, device, info)
    denoiser = build_denoiser(cfg, model)
    loss_fn = DenoisingLoss(cfg.diffusion.loss, make_process(cfg.diffusion.process), exact)
    state = new_training_state(cfg, net)
    checkpoints = run_dir / "checkpoints"
    if resume:
        found = resume_training_state(state, checkpoints, info)
        if found is not None and info.is_main:
            print(f"resuming {run_dir} from {found.name} (step {state.step})")
    if resume and state.step >= t.steps:  # before the logger: no new logs, no new TensorBoard file
        if info.is_main:
            print(finished_message(run_dir, t.steps))
        return run_dir
    if state.power_ema is not None and info.is_main:
        remove_snapshots_after(run_dir / SNAPSHOT_FOLDER, state.step)
    logger = RunLogger(run_dir, state.step, t.steps, progress) if info.is_main else None
    run = _Run(cfg, info, dataset, model, denoiser, loss_fn, state, checkpoints, logger)
    stop_request = StopOnSignal()
    if t.precision == "bf16" and device.type == "cpu" and info.is_main and not cpu_has_bf16():
        warnings.warn(BF16_ON_SLOW_CPU, stacklevel=2)
    net.train()
    try:
        interrupted = _train_steps(run, stop_request, stop_after, on_log)
    except torch.OutOfMemoryError:
        raise DiffguideError(
            f"out of memory on {device} with train.batch_size={t.batch_size}; try a smaller batch, e.g. "
            f"--set train.batch_size={max(1, t.batch_size // 2)}, or --set train.accum_steps={2 * t.accum_steps}"
        ) from None
    except TrainingDiverged as e:  # the step says what went wrong; the loop knows what is kept
        raise TrainingDiverged(e.problem, e.step, checkpoints) from None
    finally:
        stop_request.restore()
        if logger is not None:
            logger.close()
    if interrupted:  # a library caller must not carry on as if the run were finished
        distributed.barrier(info)
        raise TrainingInterrupted(
            stop_request.signum, state.step, checkpoints / checkpoint_name(state.step), run_dir
        )
    if on_finish is not None:
        on_finish(net, state.ema)
    distributed.barrier(info)
    return run_dir


def finished_message(run_dir: Path, steps: int) -> str:
    """What a resume of a finished run says: nothing to do, and how to train longer."""
    return (
        f"run {str(run_dir)!r} is already finished (train.steps={steps} reached); nothing to do. To train "
        f"longer, resume with more steps, e.g. --set train.steps={2 * steps} --resume"
    )


@dataclass
class _Run:
    """What the step loop uses, built once by train()."""

    cfg: RunConfig
    info: distributed.DistInfo
    dataset: Dataset
    model: torch.nn.Module  # the network as called: state.net, or its DDP / torch.compile wrapper
    denoiser: Callable
    loss_fn: DenoisingLoss
    state: TrainingState
    checkpoints: Path  # the run's checkpoints/ folder
    logger: RunLogger | None  # rank 0 only


def _train_steps(run: _Run, stop_request: StopOnSignal, stop_after: int | None, on_log) -> bool:
    """Step until train.steps (or stop_after, or a signal), logging and checkpointing on the way.

    Returns True when a signal (on any rank) stopped it before train.steps."""
    t, state, info = run.cfg.train, run.state, run.info
    schedule = lr_schedule(t)
    num_classes = run.dataset.num_classes if run.cfg.data.conditional else 0
    while state.step < t.steps:
        batch = draw_batch(
            run.dataset,
            run.loss_fn,
            state.generator,
            t.batch_size,
            num_classes=num_classes,
            p_uncond=t.p_uncond,
            info=info,
        )
        lr = schedule(state.step)
        result = train_step(state, batch, run.denoiser, run.loss_fn, t, lr=lr, model=run.model, info=info)
        if run.logger is not None:
            _report(run.logger, t, state.step, result, lr, on_log)
        signalled = distributed.any_rank(stop_request.requested, info)
        stopping = (stop_after is not None and state.step >= stop_after) or signalled
        _save_due(run, stopping)
        if stopping:
            return signalled and state.step < t.steps
    return False


def _save_due(run: _Run, stopping: bool) -> None:
    """Write the power-function EMA snapshot and the checkpoint this step is due for (rank 0).

    The snapshot goes first: a crash between the two leaves a snapshot newer than the checkpoint,
    which a resume deletes and writes again."""
    t, state = run.cfg.train, run.state
    last = state.step == t.steps
    snapshot = state.power_ema is not None and (state.step % t.ema_snapshot_every == 0 or last)
    checkpoint = state.step % t.ckpt_every == 0 or last or stopping
    if run.info.is_main and snapshot:
        save_snapshot(run.checkpoints.parent / SNAPSHOT_FOLDER, state.step, state.power_ema)
    if checkpoint:
        if run.info.is_main:
            save_training_state(run.checkpoints, state, t.keep_last)
        distributed.barrier(info=run.info)


def _report(logger: RunLogger, t: TrainConfig, step: int, result: StepResult, lr: float, on_log) -> None:
    """Log every log_every steps and the last (skipped steps are not logged, but said)."""
    logger.advance(step)
    if result.skipped:
        print(f"step {step}: {result.problem}, step skipped (train.on_nan=skip)")
        return
    if step % t.log_every == 0 or step == t.steps:
        record = {"loss": result.loss.item(), "lr": lr, "grad_norm": float(result.grad_norm)}
        logger.log(step, record, t.batch_size)
        if on_log is not None:
            on_log({"step": step, "total": t.steps, **record})


def lr_schedule(t: TrainConfig) -> LRSchedule:
    """The config's learning rate as a function of the step (optim.LR_SCHEDULES[train.decay])."""
    return make_lr_schedule(
        t.decay, t.lr, warmup_steps=t.warmup_steps, total_steps=t.steps, min_lr_ratio=t.min_lr_ratio
    )


def exact_denoiser(cfg: RunConfig, dataset: Dataset, device: torch.device) -> GaussianMixture | None:
    """The data's exact mixture on `device` as the loss's target when diffusion.loss.exact_target, else
    None; refused for data without one. A copy: the dataset keeps sampling its own on the CPU."""
    if not cfg.diffusion.loss.exact_target:
        return None
    if dataset.mixture is None:
        raise ConfigError(
            "diffusion.loss.exact_target=true needs data with an exact mixture (data.name=tree, 8gaussians, "
            f"grid, or mixture with data.path); data.name={cfg.data.name!r} has none"
        )
    return copy.deepcopy(dataset.mixture).to(device)


def check_batch_split(t: TrainConfig, info: distributed.DistInfo) -> None:
    """The global batch must split evenly into processes x accumulation micro-batches."""
    if t.batch_size % (info.world_size * t.accum_steps):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by processes x accum_steps "
            f"= {info.world_size} x {t.accum_steps}"
        )


def build_model(
    cfg: RunConfig, dataset: Dataset, device: torch.device, info: distributed.DistInfo
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(net, model): the network initialised from train.seed on `device`, and the module training calls
    (DDP's wrapper of net under torchrun, compiled if train.compile)."""
    t = cfg.train
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
    return net, model
