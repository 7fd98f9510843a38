"""`diffguide train-classifier | eval`: the feature-space image metrics (see metrics_images.py)."""

from __future__ import annotations

import math
from pathlib import Path

from diffguide.cli.common import (
    add_device_arg,
    add_threads_arg,
    check_json_output,
    check_writable_place,
    device_of,
    write_json,
)
from diffguide.cli.progress import add_progress_flag, progress_bar, sampling_callback
from diffguide.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("train-classifier", help="train the small classifier an image dataset's metrics use")
    p.add_argument(
        "--data", required=True, help="dataset name: digits, mnist, fashion-mnist, cryptopunks, ..."
    )
    p.add_argument("--data-path", default="", help="data.path for file-based sets (mnist IDX folder, ...)")
    p.add_argument("--out", help="output folder (default: runs/classifier-DATA)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the classifier already in --out (or write into a non-empty folder)",
    )
    add_progress_flag(p)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser(
        "eval", help="feature-space FID/KID/precision/recall and conditional accuracy of a run"
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--classifier", help="classifier folder (default: runs/classifier-DATA)")
    p.add_argument("--checkpoint", help="checkpoint file (default: latest good)")
    p.add_argument("--raw", action="store_true", help="use raw weights instead of the EMA (guides too)")
    p.add_argument("--n", type=int, default=2000, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", help="sampler name (default: the run's)")
    p.add_argument("--steps", type=int, help="number of steps (default: the run's)")
    p.add_argument(
        "--grid",
        help="sigma grid: karras, loglinear, uniform-t, or a grid file from `diffguide tune-grid` (FILE.json; "
        "then its sampler is the default and --steps does not apply), as in `sample`",
    )
    p.add_argument(
        "--sampler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampler's own option, repeatable, as in `sample`: eta=0.5 (ddim), max_order=3 (ipndm), ...",
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--k", type=int, default=3, help="neighbours for precision/recall (default 3)")
    p.add_argument(
        "--inception",
        action="store_true",
        help="also standard Inception FID (needs torch-fidelity, torchvision and the weights file locally; "
        "checked before sampling)",
    )
    p.add_argument("--out", help="JSON file for the results (default: RUN/eval.json)")
    p.add_argument("--force", action="store_true", help="replace an existing --out that `eval` did not write")
    p.add_argument("--samples", help="also write the samples as a PNG grid here")
    add_progress_flag(p)
    add_device_arg(p)
    from diffguide.cli import guidance_args

    guidance_args.add_sample_args(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_eval)


# keys of every eval.json, to recognise one written before `written_by` was recorded
EVAL_KEYS = ("run", "step", "n", "sampler", "sample_seconds", "classifier")


def default_classifier_dir(data_name: str) -> Path:
    return Path("runs") / f"classifier-{data_name}"


def cmd_train_classifier(args) -> int:
    from diffguide.classifiers.images import train_classifier
    from diffguide.data.registry import DataConfig

    for flag in ("steps", "batch_size", "width", "feature_dim"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, got {args.lr}")
    out = Path(args.out) if args.out else default_classifier_dir(args.data)
    check_classifier_out(out, args.force)
    with progress_bar(args.steps, "training classifier", "steps", enabled=not args.no_progress) as bar:
        train_classifier(
            DataConfig(name=args.data, path=args.data_path, conditional=True), out, steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, width=args.width, feature_dim=args.feature_dim,
            seed=args.seed, log=bar.write,  # the loss lines above the bar, not through it
            progress=lambda done: bar.update(done - bar.n),
        )  # fmt: skip
    print(f"classifier written to {out}")
    return 0


def check_classifier_out(out: Path, force: bool) -> None:
    """A trained classifier is replaced only with --force (eval's numbers would change without a word);
    so is a non-empty folder that holds none. A file, or a place that cannot be written, never."""
    from diffguide.classifiers.record import RECORD_FILE

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder for the classifier")
    check_writable_place(out / RECORD_FILE)  # an unwritable place fails now, not after training
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    if (out / RECORD_FILE).exists():
        raise ConfigError(
            f"--out {str(out)!r} already holds a classifier ({RECORD_FILE}); choose another --out, or add "
            "--force to replace it (the metrics `eval` reports with it will change)"
        )
    raise ConfigError(
        f"--out {str(out)!r} is a non-empty folder without a classifier; choose a new or empty folder, or "
        "add --force to write the classifier into it"
    )


def cmd_eval(args) -> int:
    from diffguide.cli import guidance_args
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run
    from diffguide.samplers.registry import sampler_options

    if args.n < 2:
        raise ConfigError(f"--n must be >= 2, got {args.n}")
    if args.k < 1:
        raise ConfigError(f"--k (neighbours for precision/recall) must be >= 1, got {args.k}")
    device = device_of(args)
    out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    check_json_output(out, "eval", force=args.force, example="eval.json", legacy_keys=EVAL_KEYS)
    run = load_run(args.run, args.checkpoint, use_ema=not args.raw, device=device)
    if run.dataset.kind != "images":
        raise ConfigError(f"`eval` measures image runs; {args.run!r} is a {run.dataset.kind} run")
    clf = Path(args.classifier) if args.classifier else default_classifier_dir(run.config.data.name)
    denoiser = guidance_args.guided_denoiser(args, run)
    sampler, steps, sigmas = args.sampler, args.steps, None
    if args.grid:  # a grid name or a tuned grid file, as `sample --grid`
        from diffguide.cli.tune_grid import sampling_grid

        sigmas, grid_sampler = sampling_grid(args, run, run.config.sample.steps if steps is None else steps)
        sampler, steps = sampler or grid_sampler, None
    options = sampler_options(sampler or run.config.sample.sampler, args.sampler_option)
    with progress_bar(args.n, "sampling", "samples", enabled=not args.no_progress) as bar:
        result, x = evaluate_images(
            run, denoiser, clf, n=args.n, seed=args.seed, sampler=sampler, steps=steps, sigmas=sigmas,
            batch_size=args.batch_size, k=args.k, inception=args.inception,
            callback=sampling_callback(bar), device=device, sampler_kwargs=options,
        )  # fmt: skip
    if args.grid:
        result["grid"] = args.grid
    result["guidance"] = {
        k: v for k, v in vars(args).items() if k in ("guidance", "w_cfg", "guide", "interval", "rescale")
    } | {"w": guidance_args.weight(args)}
    write_json(out, result, written_by="diffguide eval")
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:28s} {value:.4f}")
    print(f"wrote {out}")
    if args.samples:
        from diffguide.plots.images import save_grid

        save_grid(args.samples, x[:100])
    return 0
