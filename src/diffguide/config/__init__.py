"""Typed run configuration: dataclasses per component, named TOML presets, `--set key=value` overrides.

The resolved config is written as JSON next to every checkpoint, so a model can be rebuilt from its
run folder alone. Nothing here executes code from a file or resolves class names from strings.

Modules: `schema` (the dataclasses), `convert` (dict <-> dataclass, typed, with closest-key errors),
`validate` (one check per section, reading the registries that also build each choice), `load`
(presets, config files, overrides).
"""

from diffguide.config.convert import all_keys, from_dict, to_dict
from diffguide.config.load import (
    apply_overrides,
    load_config_file,
    load_preset,
    parse_config,
    preset_names,
    preset_summaries,
)
from diffguide.config.schema import (
    DiffusionConfig,
    ModelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
)
from diffguide.config.validate import validate
from diffguide.data.registry import DataConfig
from diffguide.errors import ConfigError
from diffguide.io import parse_override
from diffguide.losses import LossConfig
from diffguide.processes import ProcessConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "LossConfig",
    "ModelConfig",
    "ProcessConfig",
    "RunConfig",
    "SampleConfig",
    "TrainConfig",
    "all_keys",
    "apply_overrides",
    "from_dict",
    "load_config_file",
    "load_preset",
    "parse_config",
    "parse_override",
    "preset_names",
    "preset_summaries",
    "to_dict",
    "validate",
]
