"""Build networks and denoisers from a config: architectures come from the nets registry."""

from __future__ import annotations

from torch import nn

from diffguide.config import RunConfig
from diffguide.denoiser import EDMPrecond, ProcessPrecond
from diffguide.models.nets.registry import get_architecture
from diffguide.processes import make_process


def build_network(cfg: RunConfig, dataset) -> nn.Module:
    """The raw network F(x_in, c_noise, cond) for the config's architecture and the data's shape."""
    return get_architecture(cfg.model.arch).build(cfg, dataset)


def build_denoiser(cfg: RunConfig, net: nn.Module) -> nn.Module:
    """Wrap the network with the preconditioning its training target needs."""
    loss = cfg.diffusion.loss
    if loss.target == "edm":
        return EDMPrecond(net, loss.sigma_data)
    return ProcessPrecond(net, make_process(cfg.diffusion.process), loss.target)
