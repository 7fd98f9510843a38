"""Condition options of `sample`: --class (and, for attribute data, the images feature's options)."""

from __future__ import annotations

from ..errors import ConfigError


def add_sample_args(p) -> None:
    p.add_argument("--class", dest="class_label", type=int, help="class label for conditional runs")


def build_condition(args, run, n: int):
    """The condition for n samples from the CLI options: None, or a class label for all of them."""
    if getattr(args, "class_label", None) is None:
        return None
    if not run.num_classes:
        raise ConfigError(f"run {run.config.name!r} is unconditional; --class is not available")
    if not 0 <= args.class_label < run.num_classes:
        raise ConfigError(f"--class must be in 0..{run.num_classes - 1}, got {args.class_label}")
    return args.class_label
