"""Typed run configuration: dataclasses per component, named TOML presets, `--set key=value` overrides.

The resolved config is written as JSON next to every checkpoint, so a model can be rebuilt from its
run folder alone. Nothing here executes code from a file or resolves class names from strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from diffguide.data.registry import DataConfig, check_data_config
from diffguide.errors import ConfigError, lookup, unknown
from diffguide.grids import GRIDS
from diffguide.io import parse_override
from diffguide.losses import DenoisingLoss, LossConfig
from diffguide.processes import ProcessConfig, make_process
from diffguide.samplers.registry import SAMPLERS

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib


@dataclass
class ModelConfig:
    """Network architecture. MLP fields: width, depth; U-Net fields: channels .. attn_resolutions."""

    arch: str = "mlp"  # mlp | unet
    width: int = 256
    depth: int = 4
    emb_dim: int = 64
    dropout: float = 0.0
    embedding: str = "positional"  # positional | fourier
    channels: int = 64
    channel_mult: list = field(default_factory=lambda: [1, 2])
    num_blocks: int = 2
    attn_resolutions: list = field(default_factory=list)
    # U-Net GroupNorm groups in every layer (diffusers' norm_num_groups); 0: min(32, C/4) per layer
    norm_groups: int = 0


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
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    decay: str = "cosine"  # none | cosine | linear | inv-sqrt
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
    precision: str = "fp32"  # fp32 | bf16 (autocast; master weights stay fp32)
    compile: bool = False  # torch.compile the network
    channels_last: bool = False  # channels-last memory format (U-Net on GPU)
    on_nan: str = "stop"  # stop | skip: what a NaN/Inf loss or gradient does


@dataclass
class SampleConfig:
    """Default sampling settings for the run (the CLI can override each)."""

    sampler: str = "heun"
    steps: int = 32
    grid: str = "karras"
    rho: float = 7.0
    sigma_min: float = 0.0  # 0 = the process's own range
    sigma_max: float = 0.0
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


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass, with errors naming the bad key and the closest valid ones


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check/convert a parsed value to the field type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected nothing, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # no setting means anything at NaN or infinity
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp in (list, dict) or origin in (list, dict):
        base = origin or tp
        if not isinstance(value, base):
            raise ConfigError(f"{key}: expected a {base.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys raise with the closest valid names."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise unknown("config key", full, [f"{prefix}{n}" for n in names])
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return asdict(cfg)


def all_keys(cls=RunConfig, prefix: str = "") -> dict[str, type]:
    """Every dotted leaf key of a config class and its type."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(all_keys(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of cfg with each 'dotted.key=value' applied and type-checked."""
    data = to_dict(cfg)
    keys = all_keys()
    for text in overrides:
        key, value = parse_override(text)
        if key not in keys:
            raise unknown("config key", key, keys)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate(from_dict(RunConfig, data))


def validate(cfg: RunConfig) -> RunConfig:
    """Range and name checks that types alone cannot express, all at config time (before any folder is
    written or any step is trained); each error names the value and what would be right."""
    t, m, s = cfg.train, cfg.model, cfg.sample
    checks = [
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
        (s.steps >= 1, f"sample.steps must be >= 1, got {s.steps}"),
        (s.n >= 1, f"sample.n must be >= 1, got {s.n}"),
        (s.rho > 0, f"sample.rho must be > 0, got {s.rho}"),
        (cfg.data.size >= 1, f"data.size must be >= 1, got {cfg.data.size}"),
        (
            m.width >= 1 and m.depth >= 0,
            f"model.width must be >= 1 and model.depth >= 0, got {m.width}, {m.depth}",
        ),
        (
            m.emb_dim >= 2 and m.emb_dim % 2 == 0,
            f"model.emb_dim must be an even number >= 2, got {m.emb_dim}",
        ),
        (0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}"),
        (
            m.channels >= 1 and m.num_blocks >= 1,
            f"model.channels and model.num_blocks must be >= 1, got {m.channels}, {m.num_blocks}",
        ),
        (
            bool(m.channel_mult) and all(_positive_int(c) for c in m.channel_mult),
            f"model.channel_mult must be a non-empty list of integers >= 1, got {m.channel_mult}",
        ),
        (
            all(_positive_int(r) for r in m.attn_resolutions),
            f"model.attn_resolutions must be a list of integers >= 1, got {m.attn_resolutions}",
        ),
        (
            cfg.diffusion.loss.sigma_data > 0,
            f"diffusion.loss.sigma_data must be > 0, got {cfg.diffusion.loss.sigma_data}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    lookup("optimizer", t.optimizer, {"adam": 0, "adamw": 0})
    lookup("precision", t.precision, {"fp32": 0, "bf16": 0})
    lookup("on_nan policy", t.on_nan, {"stop": 0, "skip": 0})
    if t.accum_steps < 1 or t.batch_size % t.accum_steps:
        raise ConfigError(
            f"train.accum_steps must be >= 1 and divide train.batch_size={t.batch_size}, got {t.accum_steps}"
        )
    lookup("learning-rate decay", t.decay, {"none": 0, "cosine": 0, "linear": 0, "inv-sqrt": 0})
    lookup("architecture", m.arch, {"mlp": 0, "unet": 0})
    lookup("noise embedding", m.embedding, {"positional": 0, "fourier": 0})
    if m.arch == "unet" and m.channels % 2:
        raise ConfigError(
            f"model.channels must be even for the U-Net (its noise embedding), got {m.channels}"
        )
    process = make_process(cfg.diffusion.process)  # checks the process name and its parameters
    DenoisingLoss(cfg.diffusion.loss, process)  # checks the target, weighting and noise sampling names
    lookup("sampler", s.sampler, SAMPLERS)
    lookup("sigma grid", s.grid, dict.fromkeys(GRIDS))
    # sampling bounds: 0 means the process's own; the resolved range must be 0 < min < max
    if not (s.sigma_min >= 0 and s.sigma_max >= 0):
        raise ConfigError(
            f"sample.sigma_min and sample.sigma_max must be >= 0 (0 = the process's own), got "
            f"{s.sigma_min} and {s.sigma_max}"
        )
    lo, hi = s.sigma_min or process.sigma_min, s.sigma_max or process.sigma_max
    if not lo < hi:
        raise ConfigError(
            f"need 0 < sample.sigma_min < sample.sigma_max, got {s.sigma_min} and {s.sigma_max}"
            + (
                ""
                if s.sigma_min and s.sigma_max
                else f" (0 = the {process.name} process's own bound; its range is "
                f"{process.sigma_min:g} .. {process.sigma_max:g})"
            )
        )
    check_data_config(cfg.data)  # the dataset name and its options (no data files are read)
    return cfg


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# ---------------------------------------------------------------------------------------------
# presets (TOML files shipped in the package) and run files


def _preset_files() -> dict[str, object]:
    folder = resources.files("diffguide") / "presets"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def preset_names() -> list[str]:
    return sorted(_preset_files())


def load_preset(name: str) -> RunConfig:
    """The named preset as a validated RunConfig (its `name` is the preset's name)."""
    files = _preset_files()
    if name not in files:
        raise unknown("preset", name, files)
    data = tomllib.loads(files[name].read_text())
    data.setdefault("name", name)
    return validate(from_dict(RunConfig, data))


def load_config_file(path: str | Path) -> RunConfig:
    """A config from a .json (run folder) or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    return parse_config(text, "json" if path.suffix == ".json" else "toml", source=str(path))


def parse_config(text: str, fmt: str = "toml", source: str = "config") -> RunConfig:
    """A validated RunConfig from TOML or JSON text; any problem is a ConfigError naming it."""
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot parse {source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"cannot parse {source}: nested too deeply") from None
    return validate(from_dict(RunConfig, data))


def preset_summaries() -> list[tuple[str, str]]:
    """(name, one-line description) of every preset."""
    return [(name, load_preset(name).description) for name in preset_names()]
