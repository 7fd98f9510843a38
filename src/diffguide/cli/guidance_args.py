"""Guidance options of `train` (--with-amateur, --with-classifier) and `sample` (--guidance ...).

The weight --w is ours: guide + w (main - guide), w = 1 no guidance. Ho & Salimans' w' is w - 1;
diffusers' guidance_scale is w (see docs/guidance.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from diffguide.errors import ConfigError
from diffguide.io import parse_override

if TYPE_CHECKING:
    from diffguide.guidance.spec import GuidanceSpec

# The names of guidance.spec.METHODS, for --help: importing that registry imports torch, and the
# parser must not (`diffguide --help` in <= 0.3 s). tests/cli/test_cli_startup.py checks they agree.
METHOD_NAMES = (
    "none", "cfg", "auto", "classifier", "cfg+auto", "apg", "cfg-zero*", "tcfg", "mambo-g", "fdg", "icg",
    "cfg++", "pag", "seg", "slg", "dropout", "tsg",
)  # fmt: skip

# how the guidance builder's messages name each GuidanceSpec field on the command line
DEFAULT_W = 2.0  # --w when it is not given
CLI_NAMES = {
    "kind": "--guidance",
    "w": "--w",
    "w_cfg": "--w-cfg",
    "interval": "--interval",
    "rescale": "--rescale",
    "guide": "--guide",
    "classifier": "--guide",
    "null": "--null-encoder-hidden-states",
    "clip": "--clip-denoised",
    "schedule": "--schedule",
    "threshold": "--dynamic-threshold",
}


def add_train_args(p) -> None:
    g = p.add_argument_group("guidance (train guides next to the run)")
    g.add_argument(
        "--with-amateur",
        action="store_true",
        help="also train a weaker amateur for autoguidance into RUNS/NAME-amateur",
    )
    g.add_argument(
        "--amateur-width",
        type=int,
        metavar="W",
        help="amateur width: model.width of an MLP, model.channels of a U-Net (default: half)",
    )
    g.add_argument("--amateur-steps", type=int, metavar="K", help="amateur steps (default: half)")
    g.add_argument(
        "--with-classifier",
        action="store_true",
        help="also train a noise-conditional classifier (2D data) into RUNS/NAME-classifier",
    )
    g.add_argument("--classifier-steps", type=int, metavar="K", help="classifier training steps")


def add_sample_args(p) -> None:
    g = p.add_argument_group("guidance")
    g.add_argument(
        "--guidance",
        default="none",
        metavar="KIND",
        help=f"{' | '.join(METHOD_NAMES)} (default: none)",
    )
    g.add_argument(
        "--w", type=float, help=f"guidance weight, ours: 1 = none (default: {DEFAULT_W:g}; needs --guidance)"
    )
    g.add_argument(
        "--w-cfg",
        type=float,
        help="CFG weight with --guidance cfg+auto (default: --w); "
        "with pag, seg, slg, dropout, tsg: adds CFG at this weight (default: off)",
    )
    g.add_argument(
        "--guide",
        metavar="DIR",
        help="guide: the amateur run folder or RUN/checkpoints/ckpt-N.safetensors (auto, cfg+auto), or the "
        "classifier folder (classifier; 'exact': the Bayes classifier of the run's mixture) (default: the "
        "ones named in the run's guidance.json)",
    )
    g.add_argument(
        "--guide-ema-std",
        type=float,
        metavar="S",
        help="auto, cfg+auto: the guide is this run itself with the EMA of relative std S, rebuilt post hoc "
        "from its train.ema_stds snapshots (EDM2; docs/training.md)",
    )
    g.add_argument(
        "--interval",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="guide only for sigma in [LO, HI] (Kynkaanniemi et al. 2024)",
    )
    g.add_argument(
        "--rescale",
        type=float,
        default=0.0,
        metavar="PHI",
        help="guidance rescale phi in [0, 1] (Lin et al. 2024) for cfg, auto, cfg+auto, fdg, icg and the "
        "same-network guides (default: 0, off)",
    )
    g.add_argument(
        "--guidance-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method's own option, repeatable: apg eta=0 norm_threshold=0.5 momentum=-0.5 space=x0|eps; "
        "cfg-zero* zero_init_sigma=40; mambo-g alpha=8; fdg w_low=1 levels=2 parallel_weight=1 space=x0; "
        "icg seed=0; pag pag_applied_layers=mid; seg seg_blur_sigma=inf seg_guidance_layers=mid; slg "
        "skip_layer_guidance_layers=mid; dropout dropout=0.5 auto_guidance_layers=mid seed=0; tsg s=1 "
        "alpha=0 seed=0 (docs/guidance.md)",
    )
    g.add_argument(
        "--schedule",
        nargs=3,
        metavar=("KIND", "SIGMA_LO", "SIGMA_HI"),
        help="weight schedule w(sigma): constant | step | linear | cosine over [SIGMA_LO, SIGMA_HI]",
    )
    g.add_argument(
        "--dynamic-threshold",
        type=float,
        metavar="P",
        help="dynamic thresholding of x0 at percentile P (Saharia et al. 2022), e.g. 0.995 for images",
    )
    p.add_argument(
        "--clip-denoised",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="clamp every x0 estimate (after guidance) to [LOW, HIGH], e.g. -1 1 for images: Ho et al.'s "
        "clip, diffusers' clip_sample (default: off)",
    )


def after_train(args, cfg, run_dir) -> None:
    """Train the requested guides after the expert and note them in its folder."""
    from diffguide.guidance.pairing import train_amateur, train_run_classifier

    width, steps = getattr(args, "amateur_width", None), getattr(args, "amateur_steps", None)
    for name, value in (("--amateur-width", width), ("--amateur-steps", steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    progress = not getattr(args, "no_progress", False)
    if getattr(args, "with_amateur", False) or width or steps:
        amateur = train_amateur(
            cfg, run_dir, width, steps, resume=getattr(args, "resume", False), progress=progress
        )
        print(f"amateur written to {amateur} (noted in {run_dir / 'guidance.json'})")
    if getattr(args, "with_classifier", False) or getattr(args, "classifier_steps", None):
        out = train_run_classifier(cfg, run_dir, getattr(args, "classifier_steps", None), progress=progress)
        print(f"classifier written to {out} (noted in {run_dir / 'guidance.json'})")


def weight(args) -> float:
    """--w, or DEFAULT_W when it is not given."""
    w = getattr(args, "w", None)
    return DEFAULT_W if w is None else w


def check_options_apply(args, kind: str) -> None:
    """--w without --guidance would be ignored; an --interval must be a range 0 <= LO < HI."""
    if kind == "none" and getattr(args, "w", None) is not None:
        raise ConfigError(
            f"--w {args.w:g} applies to a guidance method and would be ignored without one: add --guidance "
            "KIND (e.g. --guidance cfg or auto), or drop --w"
        )
    interval = getattr(args, "interval", None)
    if interval is not None and not 0 <= interval[0] < interval[1]:  # written so that NaN fails too
        raise ConfigError(
            f"--interval needs 0 <= LO < HI (sigmas), got {interval[0]:g} {interval[1]:g}; e.g. --interval 0.3 5"
        )


def guidance_spec(args) -> GuidanceSpec:
    """The GuidanceSpec of --guidance, --w, --w-cfg, --guide, --interval, --rescale, --clip-denoised and
    --raw (guide runs load raw weights too); --guide is the classifier folder with --guidance classifier."""
    from diffguide.guidance.spec import GuidanceSpec

    kind = getattr(args, "guidance", "none") or "none"
    check_options_apply(args, kind)
    guide = getattr(args, "guide", None)
    interval = getattr(args, "interval", None)
    clip = getattr(args, "clip_denoised", None)
    return GuidanceSpec(
        kind=kind,
        w=weight(args),
        w_cfg=getattr(args, "w_cfg", None),
        interval=None if interval is None else tuple(interval),
        rescale=getattr(args, "rescale", 0.0) or 0.0,
        guide=None if kind == "classifier" else guide,
        classifier=guide if kind == "classifier" else None,
        clip=None if not clip else tuple(clip),
        use_ema=not getattr(args, "raw", False),
        schedule=_schedule(getattr(args, "schedule", None)),
        options=dict(parse_override(text) for text in getattr(args, "guidance_option", None) or []),
        threshold=getattr(args, "dynamic_threshold", None),
    )


def _schedule(values) -> tuple[str, float, float] | None:
    """--schedule KIND LO HI as (kind, lo, hi); the bounds must be numbers."""
    if not values:
        return None
    kind, lo, hi = values
    try:
        return kind, float(lo), float(hi)
    except ValueError:
        raise ConfigError(f"--schedule KIND SIGMA_LO SIGMA_HI needs two numbers, got {lo!r} {hi!r}") from None


def guided_denoiser(args, run):
    """The denoiser to sample a run with: the builder's, from the guidance options (guidance_spec)."""
    from diffguide.guidance.spec import build_guided, check
    from diffguide.train.posthoc import posthoc_checkpoint

    spec = guidance_spec(args)
    method = check(spec, run, CLI_NAMES)
    # commands without --class (e.g. images `eval`) choose the labels themselves
    attributes = getattr(args, "attr_type", None) or getattr(args, "accessory", None)
    if method.null_guide and hasattr(args, "class_label") and args.class_label is None and not attributes:
        raise ConfigError(
            f"--guidance {spec.kind} needs a condition to guide towards: pass --class K "
            "(or --type/--accessory for an attribute run)"
        )
    std = getattr(args, "guide_ema_std", None)
    if std is not None:
        if spec.kind not in ("auto", "cfg+auto") or spec.guide is not None:
            raise ConfigError(
                f"--guide-ema-std is the guide of --guidance auto or cfg+auto, instead of --guide; got "
                f"--guidance {spec.kind}" + (" with --guide" if spec.guide is not None else "")
            )
        spec = replace(spec, guide=posthoc_checkpoint(run.path, std))
    return build_guided(run, spec, names=CLI_NAMES)
