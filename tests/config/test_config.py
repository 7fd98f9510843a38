"""Config: typed overrides, errors that name the value and the closest keys, presets, a property test."""

from __future__ import annotations

import json
import string
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffguide.config import (
    RunConfig,
    all_keys,
    apply_overrides,
    from_dict,
    load_config_file,
    load_preset,
    parse_config,
    parse_override,
    preset_names,
    to_dict,
    validate,
)
from diffguide.errors import ConfigError
from diffguide.grids import GRIDS
from diffguide.losses import NOISE_SAMPLING, TARGET_WEIGHT, WEIGHTINGS
from diffguide.models.nets.embedding import EMBEDDINGS
from diffguide.models.nets.registry import ARCHITECTURES
from diffguide.optim import LR_SCHEDULES, OPTIMIZERS
from diffguide.processes import BETA_SCHEDULES, PROCESSES, make_process
from diffguide.samplers import sample_euler, sigma_grid
from diffguide.samplers.registry import SAMPLER_SPECS, SamplerSpec


def base() -> RunConfig:
    return load_preset("tiny")


def test_overrides_parse_and_type_check():
    cfg = apply_overrides(
        base(),
        [
            "train.steps=123",
            "train.lr=3e-4",
            "train.compile=false",
            "name=my run",  # not TOML: kept as a bare string
            "model.channel_mult=[1, 2, 4]",
            "diffusion.loss.sigma_data=1",  # an integer where a float is expected becomes a float
            "data.options={depth = 3}",
        ],
    )
    assert cfg.train.steps == 123 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 3e-4 and cfg.train.compile is False and cfg.name == "my run"
    assert cfg.model.channel_mult == [1, 2, 4]
    assert cfg.diffusion.loss.sigma_data == 1.0 and isinstance(cfg.diffusion.loss.sigma_data, float)
    assert cfg.data.options == {"depth": 3}
    assert base().train.steps == 60  # the original is not modified
    assert parse_override(" train.seed = 7 ") == ("train.seed", 7)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.steps=1.5", "train.steps: expected an integer, got 1.5"),
        ("train.compile=1", "train.compile: expected true or false, got 1"),
        ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
        ("model.channel_mult=3", "model.channel_mult: expected a list, got 3"),
        ("train.steps", "must look like key=value"),
    ],
)
def test_type_errors_name_key_and_value(override, fragment):
    with pytest.raises(ConfigError) as err:
        apply_overrides(base(), [override])
    assert fragment in str(err.value)


def test_unknown_key_names_the_closest_first():
    with pytest.raises(ConfigError) as err:
        apply_overrides(base(), ["trian.steps=5"])
    message = str(err.value)
    assert message.startswith("unknown config key 'trian.steps'; did you mean 'train.steps'")
    choices = message.split("choices: ")[1].split(", ")
    assert choices[0] == "train.steps" and set(choices) == set(all_keys())  # closest first, then all
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        apply_overrides(base(), ["train.batchsize=5"])


def test_unknown_preset_names_the_closest_first():
    with pytest.raises(ConfigError) as err:
        load_preset("tinny")
    message = str(err.value)
    assert "unknown preset 'tinny'; did you mean 'tiny'" in message
    assert message.split("choices: ")[1].split(", ")[0] == "tiny"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["train.steps=-5"], "train.steps must be >= 1, got -5"),
        (["train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
        (["train.p_uncond=1.5"], "train.p_uncond must be in [0, 1], got 1.5"),
        (["train.p_uncond=-0.1"], "train.p_uncond must be in [0, 1], got -0.1"),
        (["train.lr=0"], "train.lr must be > 0, got 0"),
        (["train.ema_decay=1.0"], "train.ema_decay must be in [0, 1), got 1.0"),
        (["sample.sigma_min=2.0", "sample.sigma_max=1.0"], "got 2.0 and 1.0"),
        (["diffusion.process.sigma_min=100.0"], "sigma_min=100.0, sigma_max=80.0"),  # the EDM process
        (
            [
                "diffusion.process.name=ve",
                "diffusion.process.sigma_min=60.0",
                "diffusion.process.sigma_max=50.0",
            ],
            "sigma_min=60.0",
        ),
        (["diffusion.process.name=ddpm", "diffusion.process.T=1"], "T=1"),
        (["diffusion.process.name=vpsde"], "did you mean 'vp'"),
        (["train.optimizer=adamm"], "did you mean 'adam'"),
        (["train.accum_steps=3"], "divide train.batch_size=256, got 3"),
    ],
)
def test_bad_values_raise_config_error_naming_the_value(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        apply_overrides(base(), overrides)
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name, tmp_path):
    cfg = load_preset(name)
    assert cfg.name == name and cfg.description
    again = from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))  # as saved in a run folder
    assert again == cfg
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(cfg)))
    assert load_config_file(path) == cfg


def test_shipped_presets():
    assert {"tiny", "tree-edm", "tree-ddpm", "moons-vp", "scurve-ve", "8gaussians-edm"} <= set(preset_names())
    ddpm = load_preset("tree-ddpm")
    assert ddpm.diffusion.process.name == "ddpm" and ddpm.diffusion.loss.target == "eps"


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nstesp = 1\n")
    with pytest.raises(ConfigError, match="did you mean 'train.steps'"):
        load_config_file(unknown)


# ---------------------------------------------------------------------------------------------
# property: any override strings give a valid config or a ConfigError, never another exception

KEYS = sorted(all_keys())
TOML_VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "true",
            "false",
            "nan",
            "inf",
            "-inf",
            "[]",
            "[1, 2]",
            "{}",
            "{a = 1}",
            '"x"',
            "'",
            "[",
            "1979-05-27",
        ]
    ),
    st.sampled_from(
        ["heun", "ddpm", "vp", "ve", "ve-seed", "edm", "eps", "v", "x0", "score", "cosine", "bf16"]
    ),
    st.text(alphabet=string.printable, max_size=12),
)
OVERRIDE = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), TOML_VALUES),
    st.builds(
        lambda k, v: f"{k}={v}", st.text(alphabet=string.ascii_lowercase + "._", max_size=15), TOML_VALUES
    ),
    st.text(alphabet=string.printable, max_size=25),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OVERRIDE, max_size=3))
def test_arbitrary_overrides_give_config_or_config_error(overrides):
    try:
        cfg = apply_overrides(base(), overrides)
    except ConfigError as e:  # an error a user can read: one line, naming something
        assert str(e).strip() and "\n" not in str(e).strip(), repr(str(e))
        return
    assert isinstance(cfg, RunConfig)
    assert not _has_nan(to_dict(cfg)), overrides  # every number of a validated config is checked
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def _has_nan(value) -> bool:
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return isinstance(value, float) and value != value


# ---------------------------------------------------------------------------------------------
# property: any TOML text (or JSON, the run-folder format) gives a valid config or a ConfigError,
# never another exception and never a hang; a valid one round-trips through its saved JSON

SECTION_KEYS: dict[str, list[str]] = {
    "": ["name", "description"],
    "trian": ["steps"],
    "data.options": ["std"],
}
for _key in KEYS:
    if "." in _key:
        _section, _leaf = _key.rsplit(".", 1)
        SECTION_KEYS.setdefault(_section, []).append(_leaf)
LEAVES = sorted({leaf for leaves in SECTION_KEYS.values() for leaf in leaves})
# well-formed TOML values (the broken literals of TOML_VALUES aside): most documents parse, so the
# checks after parsing are what gets exercised
TOML_LITERALS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).lower()),
    st.sampled_from(
        ["true", "false", "nan", "inf", "-inf", "[]", "[1, 2]", "[7]", "{}", "{depth = 3}", "{a = 1}"]
    ),
    st.sampled_from(
        ["heun", "euler", "ddpm", "vp", "ve", "ve-seed", "edm", "eps", "karras", "moons", "unet"]
    ).map(json.dumps),
    st.text(alphabet=string.printable, max_size=10).map(json.dumps),
)


# a value of the key's own type (often valid), by field type
TYPED = {
    int: st.integers(-3, 5000).map(str),
    float: st.floats(-1, 100, allow_nan=False).map(repr),
    bool: st.sampled_from(["true", "false"]),
    str: st.sampled_from(
        ["heun", "euler", "edm", "ve", "vp", "eps", "karras", "moons", "tree", "cosine", "x"]
    ).map(json.dumps),
    list: st.sampled_from(["[]", "[1, 2]", "[1]", "[0]", '["a"]']),
    dict: st.sampled_from(["{}", "{depth = 3}", "{noise = 0.1}", "{pad = 2}", "{a = 1}"]),
}
FIELD_TYPE = {k.rsplit(".", 1)[-1]: tp for k, tp in all_keys().items()}


def _line(key: str):
    typed = TYPED.get(typing.get_origin(FIELD_TYPE.get(key)) or FIELD_TYPE.get(key))
    return (st.one_of(typed, typed, TOML_LITERALS) if typed is not None else TOML_LITERALS).map(
        lambda v: f"{key} = {v}"
    )


def _section(name: str):
    own = st.sampled_from(SECTION_KEYS[name])
    typo = st.one_of(st.sampled_from(LEAVES), st.text("abcdefgh_", min_size=1, max_size=6))
    keys = st.one_of(own, own, own, typo)  # mostly the section's own keys, sometimes another's or a typo
    lines = st.lists(keys, max_size=4, unique=True).flatmap(lambda ks: st.tuples(*(_line(k) for k in ks)))
    return lines.map(lambda ls: (name, list(ls)))


def _toml(sections) -> str:
    sections = sorted(sections, key=lambda s: s[0] != "")  # top-level keys before any [table]
    return "\n".join((f"[{name}]\n" if name else "") + "\n".join(lines) for name, lines in sections)


TOML_TEXT = st.one_of(
    st.lists(
        st.sampled_from(sorted(SECTION_KEYS)).flatmap(_section), max_size=5, unique_by=lambda s: s[0]
    ).map(_toml),
    st.text(alphabet=string.printable, max_size=80),
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(LEAVES + [s.split(".")[0] for s in SECTION_KEYS if s]), inner, max_size=4
        )
    ),
    max_leaves=12,
)


def _valid_or_config_error(text: str, fmt: str) -> None:
    from tests.helpers import time_limit

    with time_limit(10):
        try:
            cfg = parse_config(text, fmt)
        except ConfigError as e:  # an error a user can read: one line, naming something
            assert str(e).strip() and "\n" not in str(e).strip(), repr(str(e))
            return
    assert isinstance(cfg, RunConfig)
    assert not _has_nan(to_dict(cfg)), text
    assert parse_config(json.dumps(to_dict(cfg)), "json") == cfg  # as saved next to a checkpoint


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TOML_TEXT)
def test_arbitrary_toml_gives_config_or_config_error(text):
    _valid_or_config_error(text, "toml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUE)
def test_arbitrary_json_gives_config_or_config_error(value):
    _valid_or_config_error(json.dumps(value), "json")


# ---------------------------------------------------------------------------------------------
# sampling bounds: None (left out) is the process's own range; old run folders saved 0 for it


def test_sigma_bounds_left_out_are_none_and_give_the_process_range():
    cfg = parse_config('[sample]\ngrid = "karras"\n')
    assert cfg.sample.sigma_min is None and cfg.sample.sigma_max is None
    assert to_dict(cfg)["sample"]["sigma_min"] is None  # saved as null in config.json
    process = make_process(cfg.diffusion.process)
    sigmas = sigma_grid("karras", 4, process, cfg.sample.sigma_min, cfg.sample.sigma_max)
    assert float(sigmas[0]) == process.sigma_max and float(sigmas[-2]) == pytest.approx(process.sigma_min)


@pytest.mark.parametrize("zero", [0, 0.0])
def test_saved_zero_sigma_bounds_read_as_not_set(zero):
    """A config.json written when 0 meant "the process's own" loads with None there, so an old run
    folder's config equals (and resumes as) today's config for the same settings."""
    saved = to_dict(RunConfig())
    saved["sample"]["sigma_min"] = saved["sample"]["sigma_max"] = zero
    cfg = from_dict(RunConfig, saved)
    assert cfg.sample.sigma_min is None and cfg.sample.sigma_max is None
    assert to_dict(cfg) == to_dict(RunConfig())
    assert parse_config(json.dumps(saved), "json") == validate(RunConfig())
    saved["sample"]["sigma_max"] = 40.0  # a bound that was set stays set
    assert from_dict(RunConfig, saved).sample.sigma_max == 40.0
    saved["sample"]["sigma_min"] = False  # not a number: still a type error, not "not set"
    with pytest.raises(ConfigError, match="sample.sigma_min: expected a number, got False"):
        from_dict(RunConfig, saved)


# ---------------------------------------------------------------------------------------------
# registries: each choice is read from the registry that builds it


def test_literal_choices_are_the_registry_keys():
    """The Literal types a reader sees on the config fields list exactly the registries' names."""
    hints = {**all_keys()}
    pairs = {
        "model.arch": ARCHITECTURES,
        "model.embedding": EMBEDDINGS,
        "diffusion.process.name": PROCESSES,
        "diffusion.process.schedule": BETA_SCHEDULES,
        "diffusion.loss.target": TARGET_WEIGHT,
        "diffusion.loss.weighting": WEIGHTINGS,
        "diffusion.loss.noise_sampling": NOISE_SAMPLING,
        "sample.grid": GRIDS,
        "train.optimizer": OPTIMIZERS,
        "train.decay": LR_SCHEDULES,
    }
    for key, registry in pairs.items():
        assert typing.get_origin(hints[key]) is typing.Literal, key
        assert set(typing.get_args(hints[key])) == set(registry), key


@pytest.mark.parametrize(
    ("registry", "name", "entry", "override", "kind"),
    [
        (SAMPLER_SPECS, "euler-copy", SamplerSpec(sample_euler), "sample.sampler", "sampler"),
        (GRIDS, "karras-copy", GRIDS["karras"], "sample.grid", "sigma grid"),
        (PROCESSES, "edm-copy", PROCESSES["edm"], "diffusion.process.name", "noise process"),
        (ARCHITECTURES, "mlp-copy", ARCHITECTURES["mlp"], "model.arch", "architecture"),
        (EMBEDDINGS, "fourier-copy", EMBEDDINGS["fourier"], "model.embedding", "noise embedding"),
        (WEIGHTINGS, "snr-copy", WEIGHTINGS["snr"], "diffusion.loss.weighting", "loss weighting"),
        (
            NOISE_SAMPLING,
            "uniform-copy",
            NOISE_SAMPLING["uniform-t"],
            "diffusion.loss.noise_sampling",
            "noise sampling",
        ),
    ],
)
def test_one_registry_entry_makes_a_choice_valid(monkeypatch, registry, name, entry, override, kind):
    """Validation reads the registries themselves: a name is refused, with the registry's closest
    names, until one entry adds it; then the config accepts it with nothing else changed."""
    with pytest.raises(ConfigError, match=f"unknown {kind} '{name}'"):
        apply_overrides(base(), [f"{override}={name}"])
    monkeypatch.setitem(registry, name, entry)
    assert apply_overrides(base(), [f"{override}={name}"]) is not None
