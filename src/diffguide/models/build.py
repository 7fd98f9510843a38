"""Build networks and denoisers from a config: the one place that maps config names to classes."""

from __future__ import annotations

from torch import nn

from diffguide.config import RunConfig
from diffguide.denoiser import EDMPrecond, ProcessPrecond
from diffguide.processes import make_process


def build_network(cfg: RunConfig, dataset) -> nn.Module:
    """The raw network F(x_in, c_noise, cond) for the config's architecture and the data's shape."""
    m = cfg.model
    num_classes = dataset.num_classes if cfg.data.conditional else 0
    if m.arch == "mlp":
        from diffguide.models.nets.mlp import MLP

        dim = 1
        for s in dataset.shape:
            dim *= s
        return MLP(dim, m.width, m.depth, m.emb_dim, num_classes, m.dropout, m.embedding)
    from diffguide.models.nets.unet import build_unet  # images issue

    return build_unet(cfg, dataset)


def build_denoiser(cfg: RunConfig, net: nn.Module) -> nn.Module:
    """Wrap the network with the preconditioning its training target needs."""
    loss = cfg.diffusion.loss
    if loss.target == "edm":
        return EDMPrecond(net, loss.sigma_data)
    return ProcessPrecond(net, make_process(cfg.diffusion.process), loss.target)
