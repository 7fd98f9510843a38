"""`diffguide guidance-bench`: every guidance method swept and scored against the exact density."""

from __future__ import annotations

from diffguide.cli.common import add_force_flag
from diffguide.cli.progress import add_progress_flag, study_bars


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "guidance-bench",
        help="every guidance method, a weight sweep on the 2D tree and 8 Gaussians, exact metrics",
    )
    p.add_argument(
        "--out",
        default="out/guidance-bench",
        help="output folder: new, empty or a previous result (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data",
        metavar="FILE",
        default="",
        help="your own 2D data instead of the tree and 8 Gaussians: points (.npy/.npz/.csv) or a mixture (.json/.safetensors)",
    )
    p.add_argument("--full", action="store_true", help="the full benchmark (the demo's sizes, every weight)")
    add_progress_flag(p)
    add_force_flag(
        p, "guidance-bench", "write into a non-empty --out folder that `guidance-bench` did not write"
    )
    p.set_defaults(func=cmd_guidance_bench)


def cmd_guidance_bench(args) -> int:
    from pathlib import Path

    from diffguide.study.experiment import StudySettings
    from diffguide.study.guidance_bench import BenchSettings, check_out, method_table, run_benchmark

    out = Path(args.out)
    check_out(out, args.force)  # before any training
    bars = study_bars(args)
    if args.full:
        settings = BenchSettings(study=StudySettings(seed=args.seed))
    else:
        settings = BenchSettings.fast(args.seed)
    settings.study.progress = bars is not None  # the training bars too
    if args.data:
        settings = settings.with_data(args.data)  # a bad file stops here, before any training
    metrics = run_benchmark(out, settings, force=args.force, bars=bars)
    for name, d in metrics["datasets"].items():
        print(f"\n{name}:\n{method_table(d)}")
    print(f"\ntotal time {metrics['total_seconds']:.1f} s")
    print(f"report: {out / 'report.md'}")
    return 0
