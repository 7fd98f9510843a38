"""The architecture registry: `model.arch` name -> how to build the network and check its fields.

Read by the config check (`check`, at config time, without data) and by models.build (`build`) alike:
adding an architecture is one module under nets/ and one `Architecture` line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from diffguide.errors import lookup
from diffguide.models.nets.mlp import build_mlp, check_mlp
from diffguide.models.nets.unet import build_unet, check_unet


@dataclass(frozen=True)
class Architecture:
    """build(run_config, dataset) -> the network F(x_in, c_noise, cond); check(model_config) raises a
    ConfigError naming the model.* field the architecture cannot use."""

    build: Callable[..., nn.Module]
    check: Callable[..., None]


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(build_mlp, check_mlp),
    "unet": Architecture(build_unet, check_unet),
}
ArchitectureName = Literal["mlp", "unet"]  # the keys of ARCHITECTURES


def get_architecture(name: str) -> Architecture:
    """The architecture registered under `name` (error lists the closest names)."""
    return lookup("architecture", name, ARCHITECTURES)
