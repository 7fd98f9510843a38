"""The sampler registry: name -> spec (function, denoiser evaluations per step, stochastic or not).

The CLI, the dashboard, the config check and the benchmarks all read this one table: adding a sampler
is one function and one `SamplerSpec` line here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

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


def _one_evaluation(options: dict) -> int:
    return 1


def _two_evaluations(options: dict) -> int:
    return 2


def _predictor_corrector_evaluations(options: dict) -> int:
    """One predictor evaluation, then one per Langevin corrector step (sample_pc's corrector_steps)."""
    return 1 + options.get("corrector_steps", _defaults(sample_pc)["corrector_steps"])


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    evals_per_step(options): denoiser evaluations of one step before the last, for the sampler's
    keyword options (missing ones take their defaults); every sampler evaluates once on the last step,
    the step to sigma = 0, which returns D. stochastic: whether it draws noise with its default options
    (ddim with eta > 0 and heun with s_churn > 0 draw noise too).
    """

    function: Callable
    evals_per_step: Callable[[dict], int] = _one_evaluation
    stochastic: bool = False


SAMPLER_SPECS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(sample_euler),
    "heun": SamplerSpec(sample_heun, _two_evaluations),
    "ddim": SamplerSpec(sample_ddim),
    "ddpm": SamplerSpec(sample_ddpm, stochastic=True),
    "euler-maruyama": SamplerSpec(sample_euler_maruyama, stochastic=True),
    "pc": SamplerSpec(sample_pc, _predictor_corrector_evaluations, stochastic=True),
    "dpmpp-2m": SamplerSpec(sample_dpmpp_2m),
    "dpmpp-2m-sde": SamplerSpec(sample_dpmpp_2m_sde, stochastic=True),
    "dpmpp-3m": SamplerSpec(sample_dpmpp_3m),
    "unipc": SamplerSpec(sample_unipc),
    "unipc-3": SamplerSpec(sample_unipc_3),
    "ipndm": SamplerSpec(sample_ipndm),
}

# Views of SAMPLER_SPECS for callers that need only one column.
SAMPLERS: dict[str, Callable] = {name: spec.function for name, spec in SAMPLER_SPECS.items()}
STOCHASTIC = frozenset(name for name, spec in SAMPLER_SPECS.items() if spec.stochastic)


def get_sampler_spec(name: str) -> SamplerSpec:
    """The spec registered under `name` (error lists the closest names)."""
    return lookup("sampler", name, SAMPLER_SPECS)


def get_sampler(name: str) -> Callable:
    """The sampler function registered under `name` (error lists the closest names)."""
    return get_sampler_spec(name).function


def evals_for_steps(name: str, steps: int, options: dict | None = None) -> int:
    """Denoiser evaluations of `steps` steps on a grid ending at sigma = 0 (the last step evaluates once)."""
    per = get_sampler_spec(name).evals_per_step(options or {})
    return per * (steps - 1) + 1


def steps_for_evals(name: str, evals: int, options: dict | None = None) -> int:
    """The most steps (at least 1) a sampler can take with a budget of denoiser evaluations."""
    per = get_sampler_spec(name).evals_per_step(options or {})
    return max(1, (evals - 1) // per + 1)


def _defaults(function: Callable) -> dict:
    return {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("cond", "generator", "callback")
    }


def sampler_option_defaults(name: str) -> dict:
    """{option: default} of sampler `name`: its keyword arguments after cond, generator and callback."""
    return _defaults(get_sampler(name))


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
