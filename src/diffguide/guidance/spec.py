"""One guidance builder: a typed `GuidanceSpec` in, a denoiser out, for run folders and diffusers models.

The command line (`sample RUN`, `sample --diffusers DIR`, images `eval`) and the dashboard (Generate,
Compare) only turn their inputs into a GuidanceSpec and call `build_guided`; `check` gives the one-line
errors, each naming the bad value and what would be right. Front-ends pass `names`, how they call each
spec field (the CLI: `--w`, `--guide`, ...), so one rule gives one message everywhere.

METHODS is the registry of guidance methods: name -> how to build it from the model's parts (its
denoiser, its null-condition guide, a weaker guide model, a classifier) and which spec fields it reads.
Adding a guidance method is one entry there; validation, the CLI's `--guidance` choices and the
dashboard's select read the same table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from diffguide.adapters.diffusers import DiffusersModel, NullTextConditioned, load_diffusers
from diffguide.classifiers.points import ExactClassifier, load_classifier
from diffguide.denoiser import ClipDenoised
from diffguide.errors import ConfigError, lookup, unknown
from diffguide.guidance.cfgpp import CFGPlusPlus, check_sampler, sample_euler_cfgpp
from diffguide.guidance.combinators import (
    Guided,
    NullConditioned,
    check_interval,
    check_weight,
    classifier_guidance,
    guidance,
)
from diffguide.guidance.frequency import FDG, check_image
from diffguide.guidance.methods import (
    APG,
    SPACES,
    TCFG,
    CFGZeroStar,
    DynamicThresholding,
    MamboG,
    RandomConditioned,
    ScheduledGuidance,
    WeightSchedule,
)
from diffguide.guidance.pairing import check_compatible, find_guide
from diffguide.guidance.perturbed import PerturbedGuide, TimestepPerturbedGuide
from diffguide.models.nets.perturb import (
    ATTENTION,
    RESIDUAL,
    DropResidual,
    IdentityAttention,
    SmoothedQuery,
    noise_embedding,
    perturbable_layers,
    select_layers,
)
from diffguide.models.runs import Run, load_run

EXACT = "exact"  # GuidanceSpec.classifier: the exact Bayes classifier of the run's ground-truth mixture


@dataclass
class GuidanceSpec:
    """What to guide with: a method of METHODS and its settings (w = 1 is no guidance, ours; see
    docs/guidance.md for Ho & Salimans' and diffusers' conventions)."""

    kind: str = "none"  # a key of METHODS: none | cfg | auto | classifier | cfg+auto
    w: float = 1.0  # the guidance weight; autoguidance's with cfg+auto; the scale of classifier guidance
    w_cfg: float | None = None  # cfg+auto: the CFG weight (None: the same as w)
    interval: tuple[float, float] | None = None  # guide only for sigma in [lo, hi] (Kynkäänniemi 2024)
    rescale: float = 0.0  # guidance rescale phi in [0, 1] (Lin et al. 2024)
    guide: str | Path | None = None  # the weaker model: a run folder, RUN/checkpoints/ckpt-N.safetensors or
    # a diffusers folder; None: the amateur named in the run's guidance.json
    classifier: str | Path | None = None  # a classifier folder, EXACT, or None: the run's guidance.json's
    null: torch.Tensor | str | Path | None = None  # cfg of a UNet2DConditionModel: the null
    # encoder_hidden_states [1, L, D] (None: zeros shaped like the condition); runs use their null class.
    # check() also takes a file name here, so the CLI refuses the option before reading the file
    clip: tuple[float, float] | None = None  # clamp every guided x0 estimate to [lo, hi] (ClipDenoised)
    use_ema: bool = True  # load guide runs' EMA weights (the CLI's --raw loads the raw ones)
    schedule: tuple[str, float, float] | None = None  # w(sigma): (kind, sigma_lo, sigma_hi), WeightSchedule
    options: dict = dataclasses.field(
        default_factory=dict
    )  # the method's own options (Method.options: name -> default)
    threshold: float | None = None  # dynamic thresholding of x0 at this percentile (Saharia et al. 2022)

    def describe(self) -> str:
        """The spec in a few words, e.g. 'CFG w=2, sigma in [0.3, 5], x0 clipped to [-1, 1]'."""
        method = lookup("guidance kind", self.kind, METHODS)
        w_cfg = self.w if self.w_cfg is None else self.w_cfg
        text = method.label.format(w=float(self.w), w_cfg=float(w_cfg))
        if self.w_cfg is not None and "{w_cfg" not in method.label:  # a method's optional CFG term
            text += f" + CFG w={float(self.w_cfg):g}"
        if self.kind != "none" and self.interval is not None:
            text += f", sigma in [{self.interval[0]:g}, {self.interval[1]:g}]"
        if self.kind != "none" and self.rescale:
            text += f", rescale {self.rescale:g}"
        if self.schedule is not None:
            text += f", {self.schedule[0]} schedule over sigma [{self.schedule[1]:g}, {self.schedule[2]:g}]"
        if self.options:
            text += ", " + ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.options.items()
            )
        if self.threshold is not None:
            text += f", dynamic threshold p={self.threshold:g}"
        if self.clip:
            text += f", x0 clipped to [{self.clip[0]:g}, {self.clip[1]:g}]"
        return text


# how each field is called in messages; the CLI passes its flags, the dashboard its widget names
NAMES = {
    "kind": "guidance",
    "w": "guidance weight w",
    "w_cfg": "w_cfg",
    "interval": "interval",
    "rescale": "rescale",
    "guide": "guide",
    "classifier": "classifier",
    "null": "null condition",
    "clip": "clip",
    "schedule": "schedule",
    "options": "option",
    "threshold": "dynamic threshold",
}
# fields a method may leave unused; set for a method that does not read them, they are an error
OPTIONAL = ("w_cfg", "interval", "rescale", "guide", "classifier", "null", "schedule")


@dataclass(frozen=True)
class Loaders:
    """How build_guided reads guides from disk; the dashboard passes cached ones."""

    run: Callable = load_run  # (run_dir, checkpoint or None, use_ema) -> Run
    classifier: Callable = load_classifier  # (folder) -> classifier(x, sigma) -> logits
    diffusers: Callable = load_diffusers  # (folder) -> DiffusersModel

    @classmethod
    def on(cls, device: str | torch.device) -> Loaders:
        """The library's loaders, each loading onto `device` (build_guided's default: the model's)."""
        return cls(
            run=lambda run_dir, checkpoint=None, use_ema=True: load_run(run_dir, checkpoint, use_ema, device),
            classifier=lambda folder: load_classifier(folder, device=device),
            diffusers=lambda folder: load_diffusers(folder, device=device),
        )


def model_device(denoiser) -> torch.device:
    """Where a denoiser's weights are (the CPU for one without parameters, e.g. an exact mixture's)."""
    parameters = getattr(denoiser, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    return torch.device("cpu") if first is None else first.device


# ---------------------------------------------------------------------------------------------
# the model's parts: what the methods are built from, for a run and for a diffusers model


class RunParts:
    """A loaded run (diffguide.models.runs.Run): null guide by its null class, guides from run folders."""

    def __init__(self, run, names: Mapping[str, str], loaders: Loaders):
        self.run, self.names, self.loaders = run, names, loaders
        self.denoiser = run.denoiser
        self.num_classes = run.num_classes
        self.shape = tuple(run.dataset.shape)  # one sample's
        self.what = f"run {run.config.name!r}"

    def check_null(self, kind: str, spec: GuidanceSpec) -> None:
        if spec.null is not None:
            raise ConfigError(
                f"{self.names['null']} is for a diffusers UNet2DConditionModel; a run's null condition is "
                f"its null class (run {self.run.config.name!r})"
            )
        if not self.num_classes:
            raise ConfigError(
                f"{self.names['kind']} {kind} needs a class-conditional run trained with label dropout "
                f"(train.p_uncond > 0), whose null class is the unconditional model; "
                f"{self.run.config.name!r} is unconditional"
            )

    def check_classifier(self, kind: str) -> None:
        if self.run.dataset.kind != "points":
            raise ConfigError(
                f"{self.names['kind']} {kind} needs a noise-conditional classifier, available for 2D runs "
                "(`diffguide train ... --with-classifier`)"
            )

    def null_guide(self, spec: GuidanceSpec):
        return NullConditioned(self.denoiser, self.num_classes)

    def network(self, kind: str, point: str):
        """The run's own network, for a guide that perturbs its `point` (ATTENTION or RESIDUAL) layers."""
        net = self.denoiser.net
        if not perturbable_layers(net, point):
            arch = self.run.config.model.arch
            raise ConfigError(
                f"{self.names['kind']} {kind} perturbs self-attention layers; run {self.run.config.name!r} "
                f"has none (model.arch={arch!r}): use a U-Net run (model.arch='unet'), or "
                f"{self.names['kind']} slg or dropout, which perturb the same network's residual layers"
            )
        return net

    def embedding(self, kind: str):
        """The run's noise (time-step) embedding module, for a guide that perturbs it (TSG)."""
        module = noise_embedding(self.denoiser.net)
        if module is None:
            raise ConfigError(
                f"{self.names['kind']} {kind} perturbs the network's noise embedding; the net of run "
                f"{self.run.config.name!r} has none (noise_emb)"
            )
        return module

    def amateur(self, spec: GuidanceSpec):
        """The weaker run: spec.guide (a run folder or one of its checkpoints) or the run's noted amateur."""
        guide = spec.guide
        if guide is not None and Path(guide).is_file():
            checkpoint = Path(guide)
            run_dir = checkpoint.parent.parent
            if checkpoint.parent.name != "checkpoints" or not (run_dir / "config.json").is_file():
                raise ConfigError(
                    f"{self.names['guide']} {str(guide)!r} is a file but not a checkpoint inside a run "
                    "folder; give a run folder or RUN/checkpoints/ckpt-N.safetensors"
                )
            amateur = self.loaders.run(run_dir, checkpoint, spec.use_ema)
        else:
            amateur = self.loaders.run(find_guide(self.run.path, "amateur", guide), None, spec.use_ema)
        check_compatible(self.run, amateur)
        return amateur.denoiser

    def classifier(self, spec: GuidanceSpec):
        """spec.classifier: EXACT (the Bayes classifier of the run's mixture), a folder, or the noted one."""
        if isinstance(spec.classifier, str) and spec.classifier == EXACT:
            mixture = getattr(self.run.dataset, "mixture", None)
            if mixture is None or mixture.num_classes != self.num_classes:
                raise ConfigError(
                    f"{self.names['classifier']} {EXACT!r} needs a run on an exact mixture with its "
                    f"{self.num_classes} classes; {self.run.config.name!r} has no such ground truth"
                )
            return ExactClassifier(mixture)
        clf = self.loaders.classifier(find_guide(self.run.path, "classifier", spec.classifier))
        record = getattr(clf, "record", None)
        if record is not None and record.num_classes != self.num_classes:
            raise ConfigError(
                f"the classifier has {record.num_classes} classes but the run has {self.num_classes}"
            )
        return clf


class DiffusersParts:
    """A loaded diffusers model (DiffusersModel): null guide by a null embedding, guides from folders."""

    def __init__(self, model: DiffusersModel, names: Mapping[str, str], loaders: Loaders):
        self.model, self.names, self.loaders = model, names, loaders
        self.denoiser = model.denoiser
        self.shape = tuple(model.shape)  # one sample's
        self.what = f"this diffusers {model.unet_class}"

    def check_null(self, kind: str, spec: GuidanceSpec) -> None:
        if self.model.unet_class != "UNet2DConditionModel":
            raise ConfigError(
                f"{self.names['kind']} {kind} of a diffusers model needs a UNet2DConditionModel (its null "
                f"condition is {self.names['null']}, default zeros); this model is a {self.model.unet_class}, "
                "whose null class the folder does not record (use diffguide.guidance in Python)"
            )

    def check_classifier(self, kind: str) -> None:
        raise ConfigError(
            f"{self.names['kind']} {kind} is not available for a diffusers model (no noise-conditional "
            f"classifier); use {self.names['kind']} auto with {self.names['guide']} DIR, cfg for a "
            "UNet2DConditionModel, or diffguide.guidance in Python"
        )

    def null_guide(self, spec: GuidanceSpec):
        null = spec.null
        if null is not None and not torch.is_tensor(null):
            raise ConfigError(
                f"{self.names['null']} must be a tensor [1, L, D] here, got {type(null).__name__}"
            )
        return NullTextConditioned(self.denoiser, null)

    def amateur(self, spec: GuidanceSpec):
        if spec.guide is None:
            raise ConfigError(
                f"{self.names['kind']} {spec.kind} of a diffusers model needs {self.names['guide']} DIR: "
                "a weaker diffusers model"
            )
        guide = self.loaders.diffusers(spec.guide)
        if guide.shape != self.model.shape:
            raise ConfigError(
                f"the guide {str(spec.guide)!r} makes {guide.shape} samples but the model makes "
                f"{self.model.shape}"
            )
        if guide.unet_class != self.model.unet_class:
            raise ConfigError(
                f"the guide {str(spec.guide)!r} is a {guide.unet_class} but the model a "
                f"{self.model.unet_class}; autoguidance feeds both the same condition"
            )
        return guide.denoiser

    def classifier(self, spec: GuidanceSpec):
        self.check_classifier(spec.kind)

    def network(self, kind: str, point: str):
        raise ConfigError(
            f"{self.names['kind']} {kind} perturbs the network's own layers, which is done for diffguide's "
            f"nets (run folders); for a diffusers model use diffusers' guider of that name, or "
            f"{self.names['kind']} auto with {self.names['guide']} DIR (a weaker model)"
        )

    def embedding(self, kind: str):
        raise ConfigError(
            f"{self.names['kind']} {kind} perturbs the network's noise embedding, which is done for "
            f"diffguide's nets (run folders); for a diffusers model use {self.names['kind']} auto with "
            f"{self.names['guide']} DIR (a weaker model), or cfg for a UNet2DConditionModel"
        )


Parts = RunParts | DiffusersParts


def model_parts(
    model: Run | DiffusersModel, names: Mapping[str, str] | None = None, loaders: Loaders | None = None
) -> Parts:
    """The parts of a loaded run (anything with .denoiser, .num_classes, .dataset, .path, .config) or of
    a DiffusersModel; without `loaders`, guides are loaded onto the device of the model's weights."""
    names = {**NAMES, **(names or {})}
    loaders = loaders or Loaders.on(model_device(model.denoiser))  # guides on the model's device
    if isinstance(model, DiffusersModel):
        return DiffusersParts(model, names, loaders)
    return RunParts(model, names, loaders)


# ---------------------------------------------------------------------------------------------
# the registry


def _none(parts: Parts, spec: GuidanceSpec):
    return parts.denoiser


def _schedule(spec: GuidanceSpec) -> WeightSchedule | None:
    return None if spec.schedule is None else WeightSchedule(*spec.schedule)


def _two(main, guide, spec: GuidanceSpec):
    """guide + w (main - guide) with the spec's interval, rescale, or weight schedule."""
    if spec.schedule is not None:
        return ScheduledGuidance(main, guide, spec.w, interval=spec.interval, schedule=_schedule(spec))
    return guidance(main, guide, spec.w, interval=spec.interval, rescale=spec.rescale)


def _cfg(parts: Parts, spec: GuidanceSpec):
    """Ho & Salimans 2022: D(null) + w (D(c) - D(null))."""
    return _two(parts.denoiser, parts.null_guide(spec), spec)


def _auto(parts: Parts, spec: GuidanceSpec):
    """Karras et al. 2024: D0 + w (D1 - D0), D0 a weaker model fed the same condition."""
    return _two(parts.denoiser, parts.amateur(spec), spec)


def _against_null(cls) -> Callable[[Parts, GuidanceSpec], Callable]:
    """A method of diffguide.guidance.methods with the model's null condition as its guide."""

    def build(parts: Parts, spec: GuidanceSpec):
        options = {**METHODS[spec.kind].options, **spec.options}
        return cls(
            parts.denoiser, parts.null_guide(spec), spec.w, interval=spec.interval, schedule=_schedule(spec),
            **options,
        )  # fmt: skip

    return build


def _fdg(parts: Parts, spec: GuidanceSpec):
    """Sadat et al. 2025: CFG per Laplacian band, the finest at w, the coarsest at w_low (frequency.py)."""
    options = {**METHODS[spec.kind].options, **spec.options}
    return FDG(
        parts.denoiser, parts.null_guide(spec), spec.w, interval=spec.interval, schedule=_schedule(spec),
        rescale=spec.rescale, **options,
    )  # fmt: skip


def _icg(parts: Parts, spec: GuidanceSpec):
    """Sadat et al. 2024: CFG with a random class as the guide's condition (no label dropout needed)."""
    classes = getattr(parts, "num_classes", 0)
    if classes < 2:
        raise ConfigError(
            f"{parts.names['kind']} icg needs a class-conditional run with >= 2 classes (the guide is the "
            "model at a random class)"
        )
    seed = int({**METHODS["icg"].options, **spec.options}["seed"])
    return _two(parts.denoiser, RandomConditioned(parts.denoiser, classes, seed), spec)


def _cfgpp(parts: Parts, spec: GuidanceSpec):
    """Chung et al. 2024: the CFG estimate, renoised with the null guide's noise (see sampler_for)."""
    return CFGPlusPlus(parts.denoiser, parts.null_guide(spec), spec.w)


def _classifier(parts: Parts, spec: GuidanceSpec):
    """Dhariwal & Nichol 2021 on the unconditional model (the null condition): D(null) + w sigma^2 grad
    log p(y | x, sigma), so w = 1 is conditional sampling by Bayes' rule."""
    classifier = parts.classifier(spec)
    return classifier_guidance(parts.null_guide(spec), classifier, spec.w, interval=spec.interval)


def _cfg_and_auto(parts: Parts, spec: GuidanceSpec):
    """Both guides: D1 + (w - 1)(D1 - D0) + (w_cfg - 1)(D1 - D1(null))."""
    w_cfg = spec.w if spec.w_cfg is None else spec.w_cfg
    guides = [(parts.amateur(spec), spec.w), (parts.null_guide(spec), w_cfg)]
    return Guided(parts.denoiser, guides, interval=spec.interval, rescale=spec.rescale)


# the methods whose guide is the same network perturbed: name -> (hook point, layer option, perturbation)
PERTURBATIONS: dict[str, tuple[str, str, Callable[[Mapping], object]]] = {
    "pag": (ATTENTION, "pag_applied_layers", lambda o: IdentityAttention()),
    "seg": (ATTENTION, "seg_guidance_layers", lambda o: SmoothedQuery(o["seg_blur_sigma"])),
    "slg": (RESIDUAL, "skip_layer_guidance_layers", lambda o: DropResidual(1.0)),
    "dropout": (RESIDUAL, "auto_guidance_layers", lambda o: DropResidual(o["dropout"], int(o["seed"]))),
}


def _perturbed_guide(parts: Parts, spec: GuidanceSpec) -> PerturbedGuide:
    """The model itself with the method's perturbation on the chosen layers (models/nets/perturb.py)."""
    point, key, make = PERTURBATIONS[spec.kind]
    options = {**METHODS[spec.kind].options, **spec.options}
    perturbation = make(options)  # checks the method's numbers before the layers
    where = f"{parts.names['options']} {key} of {parts.names['kind']} {spec.kind}"
    layers = select_layers(parts.network(spec.kind, point), point, options[key], where)
    return PerturbedGuide(parts.denoiser, layers, perturbation)


def _tsg_guide(parts: Parts, spec: GuidanceSpec) -> TimestepPerturbedGuide:
    """The model itself with its noise embedding perturbed (TSG; guidance/perturbed.py)."""
    options = {**METHODS[spec.kind].options, **spec.options}
    embedding = parts.embedding(spec.kind)
    return TimestepPerturbedGuide(parts.denoiser, embedding, options["s"], options["alpha"], options["seed"])


def _perturbed(parts: Parts, spec: GuidanceSpec):
    """PAG, SEG, SLG, dropout, TSG (guidance/perturbed.py): D_pert + w (D - D_pert), plus CFG with w_cfg."""
    guide = METHODS[spec.kind].same_network(parts, spec)
    if spec.w_cfg is None:
        return _two(parts.denoiser, guide, spec)
    if spec.schedule is not None:
        raise ConfigError(
            f"{parts.names['schedule']} and {parts.names['w_cfg']} do not combine for {parts.names['kind']} "
            f"{spec.kind}; choose one"
        )
    parts.check_null(spec.kind, spec)
    guides = [(guide, spec.w), (parts.null_guide(spec), spec.w_cfg)]
    return Guided(parts.denoiser, guides, interval=spec.interval, rescale=spec.rescale)


@dataclass(frozen=True)
class Method:
    """One guidance method: its builder, the optional spec fields it reads and how it is shown."""

    build: Callable[[Parts, GuidanceSpec], Callable]
    fields: frozenset[str]  # of OPTIONAL; w and clip are every method's
    title: str  # in words (the dashboard's select, the CLI's help)
    label: str  # GuidanceSpec.describe(): a format string over w and w_cfg
    null_guide: bool = False  # guides by the model's own null condition (needs a class-conditional model)
    options: Mapping[str, object] = dataclasses.field(default_factory=dict)  # own options: name -> default
    # the guide of a method whose guide is the same network perturbed: (parts, spec) -> guide denoiser
    same_network: Callable[[Parts, GuidanceSpec], Callable] | None = None
    images: bool = False  # for [C, H, W] samples only (refused for 2D points)


METHODS: dict[str, Method] = {
    "none": Method(_none, frozenset(), "no guidance", "no guidance"),
    "cfg": Method(
        _cfg,
        frozenset({"interval", "rescale", "null", "schedule"}),
        "classifier-free guidance (CFG)",
        "CFG w={w:g}",
        null_guide=True,
    ),
    "auto": Method(
        _auto,
        frozenset({"interval", "rescale", "guide", "schedule"}),
        "autoguidance (a weaker run as guide)",
        "autoguidance w={w:g}",
    ),
    "classifier": Method(
        _classifier,
        frozenset({"interval", "classifier"}),
        "classifier guidance",
        "classifier scale {w:g}",
        null_guide=True,
    ),
    "cfg+auto": Method(
        _cfg_and_auto,
        frozenset({"w_cfg", "interval", "rescale", "guide", "null"}),
        "CFG + autoguidance (both guides at once)",
        "autoguidance w={w:g} + CFG w={w_cfg:g}",
        null_guide=True,
    ),
    "apg": Method(
        _against_null(APG),
        frozenset({"interval", "schedule", "null"}),
        "adaptive projected guidance (APG)",
        "APG w={w:g}",
        null_guide=True,
        options={"eta": 0.0, "norm_threshold": 0.0, "momentum": 0.0, "space": "x0"},
    ),
    "cfg-zero*": Method(
        _against_null(CFGZeroStar),
        frozenset({"interval", "schedule", "null"}),
        "CFG-Zero* (optimised scale, zero-init)",
        "CFG-Zero* w={w:g}",
        null_guide=True,
        options={"zero_init_sigma": math.inf, "space": "x0"},
    ),
    "tcfg": Method(
        _against_null(TCFG),
        frozenset({"interval", "schedule", "null"}),
        "tangential damping CFG (TCFG)",
        "TCFG w={w:g}",
        null_guide=True,
        options={"space": "x0"},
    ),
    "mambo-g": Method(
        _against_null(MamboG),
        frozenset({"interval", "schedule", "null"}),
        "magnitude-aware guidance (MAMBO-G)",
        "MAMBO-G w={w:g}",
        null_guide=True,
        options={"alpha": 8.0, "space": "x0"},
    ),
    "fdg": Method(
        _fdg,
        frozenset({"interval", "rescale", "schedule", "null"}),
        "frequency-decoupled guidance (FDG: CFG per Laplacian band; images)",
        "FDG w={w:g}",
        null_guide=True,
        options={"w_low": 1.0, "levels": 2, "parallel_weight": 1.0, "space": "x0"},
        images=True,
    ),
    "icg": Method(
        _icg,
        frozenset({"interval", "rescale", "schedule"}),
        "independent condition guidance (ICG: a random class as guide)",
        "ICG w={w:g}",
        options={"seed": 0},
    ),
    "cfg++": Method(
        _cfgpp,
        frozenset({"null"}),
        "CFG++ (renoise with the unconditional noise; euler/ddim)",
        "CFG++ w={w:g}",
        null_guide=True,
    ),
    "pag": Method(
        _perturbed,
        frozenset({"w_cfg", "interval", "rescale", "schedule"}),
        "perturbed-attention guidance (PAG: identity self-attention in the guide)",
        "PAG w={w:g}",
        options={"pag_applied_layers": "mid"},
        same_network=_perturbed_guide,
    ),
    "seg": Method(
        _perturbed,
        frozenset({"w_cfg", "interval", "rescale", "schedule"}),
        "smoothed-energy guidance (SEG: blurred attention query in the guide)",
        "SEG w={w:g}",
        options={"seg_blur_sigma": math.inf, "seg_guidance_layers": "mid"},
        same_network=_perturbed_guide,
    ),
    "slg": Method(
        _perturbed,
        frozenset({"w_cfg", "interval", "rescale", "schedule"}),
        "skip-layer guidance (SLG: chosen layers of the same net skipped in the guide)",
        "SLG w={w:g}",
        options={"skip_layer_guidance_layers": "mid"},
        same_network=_perturbed_guide,
    ),
    "dropout": Method(
        _perturbed,
        frozenset({"w_cfg", "interval", "rescale", "schedule"}),
        "dropout guidance (diffusers' AutoGuidance: dropout on chosen layers of the same net)",
        "dropout guidance w={w:g}",
        options={"dropout": 0.5, "auto_guidance_layers": "mid", "seed": 0},
        same_network=_perturbed_guide,
    ),
    "tsg": Method(
        _perturbed,
        frozenset({"w_cfg", "interval", "rescale", "schedule"}),
        "time-step guidance (TSG: the same net with a noisy time-step embedding as guide)",
        "TSG w={w:g}",
        options={"s": 1.0, "alpha": 0.0, "seed": 0},
        same_network=_tsg_guide,
    ),
}


# ---------------------------------------------------------------------------------------------
# validation and construction


def check(
    spec: GuidanceSpec,
    model: Run | DiffusersModel | Parts | None = None,
    names: Mapping[str, str] | None = None,
) -> Method:
    """The spec's method, after checking every value (and, given the model, what the method needs of
    it) without loading anything; ConfigError naming the bad value and what would be right."""
    names = {**NAMES, **(names or {})}
    method = lookup("guidance kind", spec.kind, METHODS)
    check_weight(spec.w, names["w"])
    if spec.w_cfg is not None:
        check_weight(spec.w_cfg, names["w_cfg"])
    check_interval(spec.interval)
    if not 0 <= spec.rescale <= 1:  # written so that NaN fails too
        raise ConfigError(f"guidance rescale must be in [0, 1], got {spec.rescale}")
    if spec.clip is not None and (len(spec.clip) != 2 or not spec.clip[0] < spec.clip[1]):
        raise ConfigError(f"{names['clip']} needs LOW < HIGH, got {' '.join(f'{v:g}' for v in spec.clip)}")
    _check_extras(spec, method, names)
    for field in OPTIONAL:
        if field not in method.fields and _is_set(getattr(spec, field), field):
            raise ConfigError(
                f"{names[field]} applies to {names['kind']} {_users(field, names)}, not {spec.kind}"
            )
    if model is not None:
        parts = model if isinstance(model, (RunParts, DiffusersParts)) else model_parts(model, names)
        if "classifier" in method.fields:
            parts.check_classifier(spec.kind)
        if method.images:
            _check_images(parts, spec, names)
        if method.null_guide or (method.same_network and spec.w_cfg is not None):
            parts.check_null(spec.kind, spec)
        if method.same_network:
            method.same_network(parts, spec)  # the network has the layers, the numbers are in range
    return method


def _check_images(parts: Parts, spec: GuidanceSpec, names: Mapping[str, str]) -> None:
    """A method for images (FDG): the model makes [C, H, W] samples large enough for its pyramid."""
    if len(parts.shape) != 3:
        raise ConfigError(
            f"{names['kind']} {spec.kind} splits images into frequency bands (a Laplacian pyramid over "
            f"H x W); {parts.what} makes samples of shape {parts.shape}, not images: use an image run, or "
            f"{names['kind']} cfg"
        )
    levels = {**METHODS[spec.kind].options, **spec.options}["levels"]
    if isinstance(levels, int) and 2 <= levels <= 8:  # else FDG names the allowed range
        check_image(torch.empty(0, *parts.shape), levels, f"{names['kind']} {spec.kind}")


def _check_option(kind: str, key: str, value, default, names: Mapping[str, str]) -> None:
    """One method option: the type of its default; numbers not NaN; `space` one of SPACES."""
    where = f"{names['options']} {key} of {names['kind']} {kind}"
    if isinstance(default, str) and key.endswith("_layers"):  # names checked against the network
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} must name layers, e.g. 'mid' or 'down.3,up.2', got {value!r}")
        return
    if isinstance(default, str):
        choices = SPACES if key == "space" else (default,)
        if value not in choices:
            raise ConfigError(f"{where} must be {' or '.join(choices)}, got {value!r}")
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int) and not (number and float(value).is_integer()):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not number or math.isnan(value):
        raise ConfigError(f"{where} must be a number (default {default!r}), got {value!r}")


def _check_extras(spec: GuidanceSpec, method: Method, names: Mapping[str, str]) -> None:
    """The method's own options, the weight schedule, dynamic thresholding and CFG++'s limits."""
    for key, value in (spec.options or {}).items():
        if key not in method.options:
            if not method.options:
                raise ConfigError(f"{names['kind']} {spec.kind} takes no {names['options']}s, got {key!r}")
            raise unknown(names["options"], key, method.options, where=f" for {names['kind']} {spec.kind}")
        _check_option(spec.kind, key, value, method.options[key], names)
    if spec.schedule is not None:
        if len(spec.schedule) != 3:
            raise ConfigError(f"{names['schedule']} is (kind, sigma_lo, sigma_hi), got {spec.schedule!r}")
        WeightSchedule(*spec.schedule)
        if spec.rescale:
            raise ConfigError(f"{names['rescale']} and {names['schedule']} do not combine; choose one")
    if spec.threshold is not None and not 0 < spec.threshold <= 1:
        raise ConfigError(f"{names['threshold']} percentile must be in (0, 1], got {spec.threshold}")
    if spec.kind == "cfg++" and (spec.clip is not None or spec.threshold is not None):
        raise ConfigError(
            f"{names['kind']} cfg++ renoises with its own estimates: {names['clip']} and "
            f"{names['threshold']} do not apply to it"
        )


def _is_set(value, field: str) -> bool:
    return bool(value) if field == "rescale" else value is not None


def _users(field: str, names: Mapping[str, str]) -> str:
    """'cfg, auto or cfg+auto': the methods reading `field` (or a field the front-end calls the same)."""
    same = {f for f in OPTIONAL if names[f] == names[field]}
    users = [kind for kind, m in METHODS.items() if m.fields & same]
    return users[0] if len(users) == 1 else f"{', '.join(users[:-1])} or {users[-1]}"


def build_guided(
    model: Run | DiffusersModel,
    spec: GuidanceSpec,
    *,
    names: Mapping[str, str] | None = None,
    loaders: Loaders | None = None,
) -> Callable:
    """The denoiser to sample with: `model`'s own (a Run or a DiffusersModel), or spec's guidance
    combinator around it; with spec.clip its x0 estimates clamped to that range (after guidance)."""
    parts = model_parts(model, names, loaders)
    method = check(spec, parts, parts.names)
    spec = dataclasses.replace(spec, interval=check_interval(spec.interval), w=float(spec.w))
    denoiser = method.build(parts, spec)
    if spec.threshold is not None:
        denoiser = DynamicThresholding(denoiser, spec.threshold)
    return ClipDenoised(denoiser, *spec.clip) if spec.clip else denoiser


def sampler_for(denoiser: Callable, sampler: str | Callable) -> str | Callable:
    """The sampler to run `denoiser` with: `sampler` itself, except for CFG++, whose own step replaces
    euler / ddim (and refuses the others: it is defined for the first-order deterministic step)."""
    if not isinstance(denoiser, CFGPlusPlus):
        return sampler
    check_sampler(sampler if isinstance(sampler, str) else getattr(sampler, "__name__", str(sampler)))
    return sample_euler_cfgpp


__all__ = [
    "EXACT",
    "METHODS",
    "NAMES",
    "DiffusersParts",
    "GuidanceSpec",
    "Loaders",
    "Method",
    "PERTURBATIONS",
    "RunParts",
    "build_guided",
    "check",
    "model_parts",
    "sampler_for",
]
