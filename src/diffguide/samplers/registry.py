"""The sampler registry: name -> sampler function, with its evaluations per step and options."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from diffguide.errors import ConfigError, lookup, unknown
from diffguide.io import parse_override
from diffguide.samplers.multistep import sample_dpmpp_3m, sample_ipndm, sample_unipc, sample_unipc_3
from diffguide.samplers.single_step import (
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    sample_pc,
)

SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "euler-maruyama": sample_euler_maruyama,
    "pc": sample_pc,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "dpmpp-3m": sample_dpmpp_3m,
    "unipc": sample_unipc,
    "unipc-3": sample_unipc_3,
    "ipndm": sample_ipndm,
}

# Denoiser evaluations per step (for budgets in benchmarks): Heun uses 2 except on the last step.
EVALS_PER_STEP = {"heun": 2, "pc": 2}
STOCHASTIC = {"ddpm", "euler-maruyama", "pc", "dpmpp-2m-sde"}


def get_sampler(name: str) -> Callable:
    """The sampler function registered under `name` (error lists the closest names)."""
    return lookup("sampler", name, SAMPLERS)


def steps_for_evals(name: str, evals: int) -> int:
    """How many steps a sampler can take with a budget of denoiser evaluations."""
    per = EVALS_PER_STEP.get(name, 1)
    return max(1, (evals + 1) // 2) if per == 2 and name == "heun" else max(1, evals // per)


def sampler_option_defaults(name: str) -> dict:
    """{option: default} of sampler `name`: its keyword arguments after cond, generator and callback."""
    return {
        p.name: p.default
        for p in inspect.signature(get_sampler(name)).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("cond", "generator", "callback")
    }


def sampler_options(name: str, pairs: list[str]) -> dict:
    """Keyword options of sampler `name` from 'key=value' strings (values read as TOML: 0.5, 3, true).

    Each key must be one of the sampler's own options (the keyword arguments after cond, generator
    and callback), and each value of the same type as the option's default; the error names the
    closest options, or says that the sampler has none.
    """
    options = sampler_option_defaults(name)
    chosen = {}
    for text in pairs:
        if "=" not in text:
            raise ConfigError(f"sampler option {text!r} must look like key=value, e.g. eta=0.5")
        key, value = parse_override(text)
        key = key.replace("-", "_")
        if not options:
            raise ConfigError(f"sampler {name!r} takes no options, got {text!r}")
        if key not in options:
            raise unknown("option", key, options, where=f" for sampler {name!r}")
        default = options[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok, wanted = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, wanted = number and isinstance(value, int) and value >= 0, "an integer >= 0"
        elif isinstance(default, float):  # every numeric option here is >= 0 (s_tmax may be inf)
            ok, wanted = number and not math.isnan(value) and value >= 0, "a number >= 0"
        else:
            ok, wanted = isinstance(value, type(default)), f"a {type(default).__name__}"
        if not ok:
            raise ConfigError(
                f"option {key} of sampler {name!r} must be {wanted} (default {default!r}), got {value!r}"
            )
        chosen[key] = float(value) if isinstance(default, float) else value
    return chosen
