"""`diffguide posthoc-ema RUN --std S`: EDM2's post-hoc EMA, a checkpoint of any EMA length after training."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "posthoc-ema",
        help="rebuild the EMA of any relative std from a run's power-function EMA snapshots (EDM2)",
        description="Reconstruct the power-function EMA with relative std S (Karras et al. 2024, "
        "post-hoc EMA) as a least-squares combination of the snapshots a run stored with "
        "train.ema_stds, and write it as a checkpoint (default RUN/checkpoints/posthoc-stdS.safetensors) "
        "that `sample RUN --checkpoint FILE` and the guide options load. See diffguide.train.posthoc.",
    )
    p.add_argument("run", help="run folder trained with train.ema_stds")
    p.add_argument(
        "--std", type=float, required=True, help="relative std of the EMA, in (0, 0.2887), e.g. 0.05"
    )
    p.add_argument(
        "--out", help="checkpoint file to write (default RUN/checkpoints/posthoc-stdS.safetensors)"
    )
    p.set_defaults(func=cmd_posthoc_ema)


def cmd_posthoc_ema(args) -> int:
    from diffguide.train.posthoc import posthoc_ema

    result = posthoc_ema(args.run, args.std, args.out)
    print(
        f"wrote {result.path}: the EMA with relative std {result.std:g} at step {result.step}, from "
        f"{result.snapshots} stored profiles (relative L2 error of the profile fit {result.fit_error:.2e}); "
        f"sample it with `diffguide sample {args.run} --checkpoint {result.path}`"
    )
    return 0
