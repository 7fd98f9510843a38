"""Typed run configuration: dataclasses per component, named TOML presets, `--set key=value` overrides.

The resolved config is written as JSON next to every checkpoint, so a model can be rebuilt from its
run folder alone. Nothing here executes code from a file or resolves class names from strings.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from .data.registry import DataConfig
from .errors import ConfigError, unknown
from .losses import LossConfig
from .processes import ProcessConfig

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
    on_nan: str = "stop"  # stop | skip: what a NaN/Inf loss does


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


def parse_override(text: str) -> tuple[str, object]:
    """'train.steps=100' -> ('train.steps', 100); the value is read as TOML, else as a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.steps=100")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


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
    """Range checks that types alone cannot express; each error names the value and the valid range."""
    t = cfg.train
    checks = [
        (t.steps >= 1, f"train.steps must be >= 1, got {t.steps}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (0 <= t.p_uncond <= 1, f"train.p_uncond must be in [0, 1], got {t.p_uncond}"),
        (0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}"),
        (t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {t.grad_clip}"),
        (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}"),
        (t.ckpt_every >= 1, f"train.ckpt_every must be >= 1, got {t.ckpt_every}"),
        (t.keep_last >= 1, f"train.keep_last must be >= 1, got {t.keep_last}"),
        (t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}"),
        (cfg.sample.steps >= 1, f"sample.steps must be >= 1, got {cfg.sample.steps}"),
        (cfg.data.size >= 1, f"data.size must be >= 1, got {cfg.data.size}"),
        (cfg.model.width >= 1 and cfg.model.depth >= 0, "model.width must be >= 1 and model.depth >= 0"),
        (
            cfg.diffusion.loss.sigma_data > 0,
            f"diffusion.loss.sigma_data must be > 0, got {cfg.diffusion.loss.sigma_data}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    s = cfg.sample
    if s.sigma_min and s.sigma_max and not 0 < s.sigma_min < s.sigma_max:
        raise ConfigError(
            f"need 0 < sample.sigma_min < sample.sigma_max, got {s.sigma_min} and {s.sigma_max}"
        )
    from .errors import lookup

    lookup("optimizer", t.optimizer, {"adam": 0, "adamw": 0})
    lookup("precision", t.precision, {"fp32": 0, "bf16": 0})
    lookup("on_nan policy", t.on_nan, {"stop": 0, "skip": 0})
    if t.accum_steps < 1 or t.batch_size % t.accum_steps:
        raise ConfigError(
            f"train.accum_steps must be >= 1 and divide train.batch_size={t.batch_size}, got {t.accum_steps}"
        )
    lookup("learning-rate decay", t.decay, {"none": 0, "cosine": 0, "linear": 0, "inv-sqrt": 0})
    lookup("architecture", cfg.model.arch, {"mlp": 0, "unet": 0})
    from .processes import make_process

    make_process(cfg.diffusion.process)  # checks the process name and its parameters
    return cfg


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
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None
    return validate(from_dict(RunConfig, data))


def preset_summaries() -> list[tuple[str, str]]:
    """(name, one-line description) of every preset."""
    return [(name, load_preset(name).description) for name in preset_names()]
