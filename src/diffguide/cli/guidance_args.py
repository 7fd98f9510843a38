"""Guidance options of `train` (--with-amateur, --with-classifier) and `sample` (--guidance ...).

The weight --w is ours: guide + w (main - guide), w = 1 no guidance. Ho & Salimans' w' is w - 1;
diffusers' guidance_scale is w (see docs/guidance.md).
"""

from __future__ import annotations

from diffguide.errors import ConfigError, lookup

KINDS = {
    "none": "the run's own denoiser",
    "cfg": "classifier-free: the same net with the null condition as guide (needs --class)",
    "auto": "autoguidance: a weaker run as guide (--guide, or the amateur named in guidance.json)",
    "classifier": "classifier guidance: D(null) + w sigma^2 grad log p(y | x, sigma) (needs --class)",
    "cfg+auto": "both guides: autoguidance weight --w, CFG weight --w-cfg",
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
        help="none | cfg | auto | classifier | cfg+auto (default: none)",
    )
    g.add_argument("--w", type=float, default=2.0, help="guidance weight, ours: 1 = none (default: 2)")
    g.add_argument("--w-cfg", type=float, help="CFG weight with --guidance cfg+auto (default: --w)")
    g.add_argument(
        "--guide",
        metavar="DIR",
        help="guide folder: the amateur run (auto) or classifier folder (classifier)",
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
        help="guidance rescale phi in [0, 1] (Lin et al. 2024) for cfg, auto, cfg+auto (default: 0, off)",
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


def guided_denoiser(args, run):
    """The denoiser to sample with, built from --guidance, --w, --guide, --interval, --rescale and
    --clip-denoised (applied last, to the guided x0 estimate)."""
    from diffguide.denoiser import ClipDenoised

    denoiser = _guided(args, run)
    clip = getattr(args, "clip_denoised", None)
    if not clip:
        return denoiser
    if not clip[0] < clip[1]:  # written so that NaN fails too
        raise ConfigError(f"--clip-denoised needs LOW < HIGH, got {clip[0]:g} {clip[1]:g}")
    return ClipDenoised(denoiser, *clip)


def _guided(args, run):
    from diffguide import guidance as G
    from diffguide.guidance.pairing import check_compatible, find_guide

    kind = getattr(args, "guidance", "none") or "none"
    lookup("guidance kind", kind, KINDS)
    w = G.check_weight(getattr(args, "w", 1.0), "--w")
    interval = G.check_interval(getattr(args, "interval", None))
    rescale = getattr(args, "rescale", 0.0) or 0.0
    if rescale and kind in ("none", "classifier"):
        raise ConfigError(f"--rescale applies to --guidance cfg, auto or cfg+auto, not {kind}")
    if kind == "none":
        return run.denoiser
    if kind in ("cfg", "classifier", "cfg+auto"):
        # from the CLI, classifier guidance also needs a class-conditional run: its null condition is
        # the unconditional model (the library's classifier_guidance takes any denoiser)
        if not run.num_classes:
            raise ConfigError(
                f"--guidance {kind} needs a class-conditional run; {run.config.name!r} is unconditional"
            )
        # commands without --class (e.g. images `eval`) choose the labels themselves
        attributes = getattr(args, "attr_type", None) or getattr(args, "accessory", None)
        if hasattr(args, "class_label") and args.class_label is None and not attributes:
            raise ConfigError(
                f"--guidance {kind} needs a condition to guide towards: pass --class K "
                "(or --type/--accessory for an attribute run)"
            )
    use_ema = not getattr(args, "raw", False)
    if kind == "cfg":
        return G.classifier_free_guidance(
            run.denoiser, w, run.num_classes, interval=interval, rescale=rescale
        )
    if kind == "classifier":
        from diffguide.classifiers.points import load_classifier

        if run.dataset.kind != "points":
            raise ConfigError(
                "--guidance classifier needs a noise-conditional classifier, available for 2D runs "
                "(`diffguide train ... --with-classifier`)"
            )
        clf = load_classifier(find_guide(run.path, "classifier", getattr(args, "guide", None)))
        if clf.record.num_classes != run.num_classes:
            raise ConfigError(
                f"classifier has {clf.record.num_classes} classes but the run has {run.num_classes}"
            )
        main = G.NullConditioned(run.denoiser, run.num_classes)
        return G.classifier_guidance(main, clf, w, interval=interval)
    amateur = load_amateur(run, getattr(args, "guide", None), use_ema)
    check_compatible(run, amateur)
    if kind == "auto":
        return G.autoguidance(run.denoiser, amateur.denoiser, w, interval=interval, rescale=rescale)
    w_cfg = G.check_weight(args.w_cfg if getattr(args, "w_cfg", None) is not None else w, "--w-cfg")
    return G.cfg_and_autoguidance(
        run.denoiser, amateur.denoiser, w, w_cfg, run.num_classes, interval=interval, rescale=rescale
    )


def load_amateur(run, guide, use_ema: bool):
    """The autoguidance guide: a run folder (--guide DIR, or the run's guidance.json), or one checkpoint
    of a run (--guide RUN/checkpoints/ckpt-N.safetensors: e.g. the same run's earlier snapshot, seed
    000's amateur)."""
    from pathlib import Path

    from diffguide.guidance.pairing import find_guide
    from diffguide.models.runs import load_run

    if guide is not None and Path(guide).is_file():
        checkpoint = Path(guide)
        run_dir = checkpoint.parent.parent
        if checkpoint.parent.name != "checkpoints" or not (run_dir / "config.json").is_file():
            raise ConfigError(
                f"--guide {str(guide)!r} is a file but not a checkpoint inside a run folder; "
                "give a run folder or RUN/checkpoints/ckpt-N.safetensors"
            )
        return load_run(run_dir, str(checkpoint), use_ema=use_ema)
    return load_run(find_guide(run.path, "amateur", guide), use_ema=use_ema)
