"""`diffguide demo`: the guidance study on the two-class tree (and the S-curve autoguidance experiment)."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train an expert and an amateur on the 2D tree; compare no guidance, CFG and autoguidance",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a much smaller study (~20-30 s, for tests)")
    p.add_argument(
        "--data",
        metavar="FILE",
        default="",
        help="your own 2D data instead of the tree: points (.npy/.npz/.csv) or a mixture (.json/.safetensors)",
    )
    p.add_argument("--no-progress", action="store_true", help="no training progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import dataclasses

    from diffguide.study import StudySettings, run_study
    from diffguide.study.evaluation import user_data
    from diffguide.study.report import metrics_table

    settings = StudySettings.fast(args.seed) if args.fast else StudySettings(seed=args.seed)
    if args.data:
        user_data(args.data)  # a bad file stops here, before any training
        settings = dataclasses.replace(
            settings, data=args.data, expert_overrides=_own(settings.expert_overrides)
        )
    if args.no_progress:
        settings.progress = False
    metrics = run_study(args.out, settings)
    print()
    print(metrics_table(metrics))
    for what, why in metrics["data"]["skipped"].items():
        print(f"skipped {what}: {why}")
    print(f"\nchosen w: {metrics['selection_rule']}")
    print(f"total time {metrics['timings_s']['total']:.1f} s")
    print(f"report: {metrics['report']}")
    return 0


def _own(overrides: list[str]) -> list[str]:
    """The size overrides of a preset setting without those that only make sense for the tree."""
    return [o for o in overrides if not o.startswith("data.")]
