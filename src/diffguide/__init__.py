"""diffguide: train, sample, guide and evaluate diffusion models around one denoiser type."""

from diffguide.denoiser import Denoiser, EDMPrecond, ProcessPrecond, append_dims
from diffguide.mixtures import GaussianMixture, make_mixture, tree_mixture
from diffguide.samplers import SAMPLERS, get_sampler

__version__ = "0.1.0"

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "EDMPrecond",
    "GaussianMixture",
    "ProcessPrecond",
    "append_dims",
    "get_sampler",
    "make_mixture",
    "tree_mixture",
]
