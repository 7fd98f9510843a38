"""`diffguide guidance-bench`: every guidance method swept and scored against the exact density."""

from __future__ import annotations


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
    p.set_defaults(func=cmd_guidance_bench)


def cmd_guidance_bench(args) -> int:
    from pathlib import Path

    from diffguide.study.experiment import StudySettings
    from diffguide.study.guidance_bench import BenchSettings, check_out, method_table, run_benchmark

    out = Path(args.out)
    check_out(out)  # before any training
    if args.full:
        settings = BenchSettings(study=StudySettings(seed=args.seed, progress=False))
    else:
        settings = BenchSettings.fast(args.seed)
    if args.data:
        settings = settings.with_data(args.data)  # a bad file stops here, before any training
    metrics = run_benchmark(out, settings)
    for name, d in metrics["datasets"].items():
        print(f"\n{name}:\n{method_table(d)}")
    print(f"\ntotal time {metrics['total_seconds']:.1f} s")
    print(f"report: {out / 'report.md'}")
    return 0
