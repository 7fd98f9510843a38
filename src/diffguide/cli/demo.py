"""`diffguide demo`: the guidance study on the two-class tree (and the S-curve autoguidance experiment)."""

from __future__ import annotations

from diffguide.cli.common import add_force_flag
from diffguide.cli.progress import add_progress_flag, study_bars


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train an expert and an amateur on the 2D tree; compare no guidance, CFG and autoguidance",
    )
    p.add_argument(
        "--out", default="out/demo", help="output folder: new, empty or an earlier demo's (default: out/demo)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a much smaller study (~20-30 s, for tests)")
    p.add_argument(
        "--data",
        metavar="FILE",
        default="",
        help="your own 2D data instead of the tree: points (.npy/.npz/.csv) or a mixture (.json/.safetensors)",
    )
    add_progress_flag(p)
    add_force_flag(p, "demo", "write into a non-empty --out folder that `demo` did not write")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import dataclasses
    from pathlib import Path

    from diffguide.study import StudySettings, run_study
    from diffguide.study.evaluation import user_data
    from diffguide.study.experiment import check_out
    from diffguide.study.report import metrics_table

    check_out(Path(args.out), args.force)  # before anything is trained
    settings = StudySettings.fast(args.seed) if args.fast else StudySettings(seed=args.seed)
    if args.data:
        user_data(args.data)  # a bad file stops here, before any training
        settings = dataclasses.replace(
            settings, data=args.data, expert_overrides=_own(settings.expert_overrides)
        )
    bars = study_bars(args)
    settings.progress = bars is not None  # the training bars too
    metrics = run_study(args.out, settings, force=args.force, bars=bars)
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
