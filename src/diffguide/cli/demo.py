"""`diffguide demo`: the main job on the embedded default."""

from __future__ import annotations

from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="train on the 2D tree mixture and write a samples figure")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a much smaller run (for tests)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..config import apply_overrides, load_preset
    from ..train import train

    cfg = load_preset("tree-edm")
    sets = [f"train.seed={args.seed}"]
    if args.fast:
        sets += ["train.steps=200", "model.width=64", "model.depth=2", "sample.n=1000"]
    cfg = apply_overrides(cfg, sets)
    run_dir = train(cfg, Path(args.out) / "tree-edm")
    print(f"samples figure: {run_dir / 'samples.png'}")
    return 0
