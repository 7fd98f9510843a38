"""The run configuration's dataclasses, one per component, with their defaults.

Fields whose value names a choice are typed with the `Literal` of its registry's keys (tests check
that the two agree); `validate` looks each name up in the registry itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from diffguide.data.registry import DataConfig
from diffguide.grids import GridName
from diffguide.losses import LossConfig
from diffguide.models.nets.embedding import EmbeddingName
from diffguide.models.nets.registry import ArchitectureName
from diffguide.optim import OptimizerName, ScheduleName
from diffguide.processes import ProcessConfig

# Choices that only the training loop reads, with no registry of their own: these Literals are the list.
Precision = Literal["fp32", "bf16"]  # bf16: autocast; master weights stay fp32
OnNan = Literal["stop", "skip"]  # what a NaN/Inf loss or gradient does


@dataclass
class ModelConfig:
    """Network architecture. MLP fields: width, depth; U-Net fields: channels .. norm_groups."""

    arch: ArchitectureName = "mlp"
    width: int = 256
    depth: int = 4
    emb_dim: int = 64
    dropout: float = 0.0
    embedding: EmbeddingName = "positional"
    channels: int = 64
    channel_mult: list = field(default_factory=lambda: [1, 2])
    num_blocks: int = 2
    attn_resolutions: list = field(default_factory=list)
    # U-Net GroupNorm groups in every layer (diffusers' norm_num_groups); 0: min(32, C/4) per layer
    norm_groups: int = 0
    # U-Net, conditional runs: channels of a learned per-condition input map (nets/unet.py ConditionMap)
    cond_map_channels: int = 0


@dataclass
class DiffusionConfig:
    """The noise process the model is trained under and the training loss."""

    process: ProcessConfig = field(default_factory=ProcessConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class TrainConfig:
    """Optimisation, schedule, EMA, label dropout, logging and checkpoint cadence."""

    steps: int = 4000
    batch_size: int = 1024
    lr: float = 1e-3
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    decay: ScheduleName = "cosine"
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.999
    # EDM2 power-function EMAs (relative stds, e.g. [0.05, 0.10]) snapshotted for post-hoc EMA; [] = off
    ema_stds: list = field(default_factory=list)
    ema_snapshot_every: int = 250  # steps between snapshots of the ema_stds profiles
    p_uncond: float = 0.1  # per-sample label dropout probability (conditional models)
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimizer step
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile the network
    channels_last: bool = False  # channels-last memory format (U-Net on GPU)
    on_nan: OnNan = "stop"


@dataclass
class SampleConfig:
    """Default sampling settings for the run (the CLI can override each)."""

    sampler: str = "heun"  # a name in samplers.registry.SAMPLER_SPECS
    steps: int = 32
    grid: GridName = "karras"
    rho: float = 7.0
    # None (left out of the TOML): the process's own bound. A 0 read from a file or --set, which
    # meant the same in run folders saved before, reads as None (config/convert.py).
    sigma_min: float | None = None
    sigma_max: float | None = None
    n: int = 4000


@dataclass
class RunConfig:
    """Everything needed to train a model and rebuild it later."""

    name: str = "run"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
