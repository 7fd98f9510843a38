"""diffguide: train, sample, guide and evaluate diffusion models around one denoiser type.

The re-exports below load on first use (PEP 562 module __getattr__), so `import diffguide` and the
`diffguide` command's parser do not import torch: `diffguide --help` answers at once.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "SAMPLERS": "diffguide.samplers",
    "get_sampler": "diffguide.samplers",
    "Denoiser": "diffguide.denoiser",
    "EDMPrecond": "diffguide.denoiser",
    "ProcessPrecond": "diffguide.denoiser",
    "append_dims": "diffguide.denoiser",
    "GaussianMixture": "diffguide.mixtures",
    "make_mixture": "diffguide.mixtures",
    "tree_mixture": "diffguide.mixtures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffguide' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
