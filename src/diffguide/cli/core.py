"""`diffguide presets | train | sample`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffguide.cli.common import (
    add_device_arg,
    add_force_flag,
    add_threads_arg,
    check_outputs,
    conditions_to,
    device_of,
    make_output_folder,
    write_json,
)
from diffguide.cli.progress import add_progress_flag, progress_bar, sampling_callback
from diffguide.errors import ConfigError, output_error
from diffguide.io import atomic_write_file

if TYPE_CHECKING:
    import torch

# numpy and torch are imported inside the commands: building the parser (`diffguide --help`) stays fast


def add_parsers(sub) -> None:
    p = sub.add_parser("presets", help="list the named presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a model from a preset into a run folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="preset name (see `diffguide presets`)")
    src.add_argument("--config", help="a config file (.toml or a run's config.json)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=500"
    )
    p.add_argument("--out", default="runs", help="runs folder (default: runs)")
    p.add_argument("--name", help="run name (default: the preset's name)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest good checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    speed = p.add_argument_group("speed (shortcuts for --set train.*)")
    speed.add_argument("--precision", choices=["fp32", "bf16"], help="train.precision: bf16 autocast")
    speed.add_argument("--compile", action="store_true", help="train.compile=true: torch.compile the network")
    speed.add_argument("--channels-last", action="store_true", help="train.channels_last=true (U-Net)")
    speed.add_argument(
        "--accum-steps", type=int, metavar="K", help="train.accum_steps: gradient accumulation"
    )
    add_train_extras(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample from a trained run (or a diffusers model: --diffusers DIR)")
    p.add_argument("run", nargs="?", help="run folder (leave out with --diffusers DIR)")
    p.add_argument("--checkpoint", help="checkpoint file (default: latest good)")
    p.add_argument("--raw", action="store_true", help="use raw weights instead of the EMA")
    p.add_argument("--sampler", help="sampler name (default: the run's)")
    p.add_argument("--steps", type=int, help="number of steps (default: the run's)")
    p.add_argument(
        "--grid",
        help="sigma grid: karras, loglinear, uniform-t, or a grid file from `diffguide tune-grid` (FILE.json; "
        "then its sampler is the default and --steps/--sigma-min/--sigma-max/--rho do not apply)",
    )
    p.add_argument("--sigma-min", type=float, help="lowest nonzero sigma of the grid (default: the run's)")
    p.add_argument(
        "--sigma-max", type=float, help="highest sigma, where sampling starts (default: the run's)"
    )
    p.add_argument("--rho", type=float, help="the Karras grid's rho (default: the run's, usually 7)")
    p.add_argument(
        "--sampler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampler's own option, repeatable: eta=0.5 (ddim), s_churn=40 (heun), snr=0.1 (pc), "
        "max_order=3 (ipndm), ...",
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="number of samples (default: the run's sample.n; 1000 for --diffusers)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--out", required=True, help="output file (.npz for 2D)")
    add_force_flag(p, "sample")
    p.add_argument(
        "--no-metrics",
        action="store_true",
        help="2D runs on an exact mixture: skip the exact metrics (precision, coverage, mean log p, "
        "sliced W2) printed and written to OUT_STEM.metrics.json",
    )
    add_progress_flag(p)
    add_device_arg(p)
    add_sample_extras(p)
    p.set_defaults(func=cmd_sample)


def add_train_extras(p) -> None:
    """Extra training options contributed by other features (guidance: --with-amateur)."""
    from diffguide.cli import guidance_args

    guidance_args.add_train_args(p)
    add_threads_arg(p)


def add_sample_extras(p) -> None:
    from diffguide.cli import condition_args, diffusers_args, guidance_args

    diffusers_args.add_sample_args(p)
    condition_args.add_sample_args(p)
    guidance_args.add_sample_args(p)
    add_threads_arg(p)


def cmd_presets(args) -> int:
    from diffguide.config import preset_summaries

    rows = preset_summaries()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name.ljust(width)}  {desc}")
    return 0


def speed_overrides(args) -> list[str]:
    """The --set overrides that --precision, --compile, --channels-last and --accum-steps stand for."""
    sets = []
    if args.precision:
        sets.append(f'train.precision="{args.precision}"')
    if args.compile:
        sets.append("train.compile=true")
    if args.channels_last:
        sets.append("train.channels_last=true")
    if args.accum_steps is not None:
        sets.append(f"train.accum_steps={args.accum_steps}")
    return sets


def resolve_config(args):
    from diffguide.config import apply_overrides, load_config_file, load_preset

    cfg = load_preset(args.preset) if args.preset else load_config_file(args.config)
    cfg = apply_overrides(cfg, [*args.set, *speed_overrides(args)])
    if args.name:
        cfg.name = args.name
    check_run_name(cfg.name)
    return cfg


def check_run_name(name: str) -> None:
    """A run name is one folder inside --out: no separators, no '..', not absolute, not empty."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).name != name:
        example = next(
            (p for p in reversed(Path(name.replace("\\", "/")).parts) if p not in ("/", ".", "..")), ""
        )
        raise ConfigError(
            f"run name {name!r} must be a single folder name inside --out (no '/', '..' or absolute path), "
            f"e.g. --name {example or 'my-run'}; put the runs elsewhere with --out"
        )


def cmd_train(args) -> int:
    from diffguide.cli import guidance_args
    from diffguide.plots.points import write_run_figure
    from diffguide.train import train
    from diffguide.train.checkpoint import latest_step
    from diffguide.train.distributed import is_main_process

    cfg = resolve_config(args)
    run_dir = Path(args.out) / cfg.name
    if args.resume and not (run_dir / "config.json").is_file():
        raise ConfigError(
            f"--resume: there is no run {str(run_dir)!r} to resume (no config.json there); check --out and "
            "--name, or drop --resume to start a new run"
        )
    before = checkpoint_stamps(run_dir)
    train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    if args.resume and checkpoint_stamps(run_dir) == before:  # a finished run: train() said so, did nothing
        return 0
    if is_main_process() and latest_step(run_dir / "checkpoints") >= cfg.train.steps:
        write_run_figure(run_dir)
    print(f"run written to {run_dir}")
    guidance_args.after_train(args, cfg, run_dir)
    return 0


def checkpoint_stamps(run_dir: Path) -> dict[str, int]:
    """Name -> modification time (ns) of each checkpoint file of a run: equal before and after a
    resume when it trained nothing."""
    folder = run_dir / "checkpoints"
    return (
        {p.name: p.stat().st_mtime_ns for p in folder.glob("ckpt-*.safetensors")} if folder.is_dir() else {}
    )


def cmd_sample(args) -> int:
    from diffguide.cli import condition_args, guidance_args
    from diffguide.cli.tune_grid import sampling_grid
    from diffguide.guidance.spec import sampler_for
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import check_sample_count, generate
    from diffguide.samplers.registry import sampler_options

    device = device_of(args)  # before anything is read or written
    if args.diffusers is not None or args.run is None:
        from diffguide.cli.diffusers_args import cmd_sample_diffusers

        return cmd_sample_diffusers(args, device)  # also refuses a run folder together with --diffusers
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.encoder_hidden_states or args.null_encoder_hidden_states:
        raise ConfigError(
            "--encoder-hidden-states and --null-encoder-hidden-states are for --diffusers DIR "
            "(a UNet2DConditionModel), not for a run folder"
        )
    run = load_run(args.run, args.checkpoint, use_ema=not args.raw, device=device)
    args.n = run.config.sample.n if args.n is None else args.n  # the run's default, as sampler and steps
    prepare_output(Path(args.out), run)  # a bad --out fails now, not after sampling
    check_outputs(Path(args.out), sample_companions(args, run), "sample", args.force)
    check_sample_count(args.n, run.dataset.shape)  # before the conditions for n samples are built
    s = run.config.sample
    steps = s.steps if args.steps is None else args.steps  # --steps 0 is an error, not the default
    sigmas, grid_sampler = sampling_grid(args, run, steps)  # --grid NAME or --grid FILE
    cond = condition_args.build_condition(args, run, args.n)
    denoiser = guidance_args.guided_denoiser(args, run)  # guides load on the run's device
    sampler_name = args.sampler or grid_sampler or s.sampler
    options = sampler_options(sampler_name, args.sampler_option)
    sampler = sampler_for(denoiser, sampler_name)  # CFG++ brings its own step
    sampler, callback = condition_args.sampler_and_callback(args, run, sampler)
    with progress_bar(args.n, "sampling", "samples", enabled=not args.no_progress) as bar:
        x = generate(
            denoiser, args.n, run.dataset.shape, sigmas=sigmas, sampler=sampler, seed=args.seed,
            cond=conditions_to(cond, device), batch_size=args.batch_size, device=device,
            callback=sampling_callback(bar, len(sigmas) - 1, callback), sampler_kwargs=options,
        )  # [n, ...] on the CPU  # fmt: skip
    write_samples(
        Path(args.out), x, run, cond, exact_metrics=not args.no_metrics, per_sample=args.per_sample,
        progress=callback,
    )  # fmt: skip
    return 0


_METRICS_CACHE: dict = {}  # data config (JSON) -> MixtureMetrics: the reference is drawn once per process


def write_exact_metrics(out: Path, x: torch.Tensor, run, labels) -> dict:
    """Exact metrics of 2D samples against the run's true mixture, printed and saved as OUT_STEM.metrics.json.

    With one requested class (--class K) they are measured against p(x | K), otherwise against p(x).
    """
    import dataclasses
    import json

    import numpy as np

    from diffguide.metrics.points import MixtureMetrics

    key = json.dumps(dataclasses.asdict(run.config.data), sort_keys=True)
    if key not in _METRICS_CACHE:
        _METRICS_CACHE[key] = MixtureMetrics(run.dataset.mixture, n_reference=20_000)
    result = _METRICS_CACHE[key].evaluate(x, labels)
    classes = set() if labels is None else {int(v) for v in np.unique(labels)}
    if len(classes) == 1:
        name = run.dataset.mixture.class_names[classes.pop()]
        shown, against = result["per_class"][name], f"p(x | {name})"
    else:
        shown, against = result, "p(x)"
    print(
        f"exact metrics against {against}: precision {shown['precision']:.3f} (ideal 0.99), "
        f"coverage {shown['coverage']:.3f}, mean log p {shown['mean_logp']:.2f}, sliced W2 {shown['sliced_w2']:.4f}"
    )
    record = {"against": against, **shown}
    if against != "p(x)":  # also the same samples against the whole mixture
        record["against_p(x)"] = {k: v for k, v in result.items() if k != "per_class"}
    write_json(out.with_name(out.stem + ".metrics.json"), record, written_by="diffguide sample")
    return result


def sample_companions(args, run) -> list[Path]:
    """The files `sample` writes beside --out: a 2D run's scatter plot and exact metrics; an image
    run's GIF (--gif) and per-sample PNGs (--per-sample, those that exist)."""
    out = Path(args.out)
    if run.dataset.kind == "points":
        return [out.with_suffix(".png"), out.with_name(out.stem + ".metrics.json")]
    paths = [out.with_suffix(".gif")] if getattr(args, "gif", False) else []
    if getattr(args, "per_sample", False):
        folder = out.with_suffix("")
        paths += sorted(folder.glob("[0-9][0-9][0-9][0-9][0-9].png")) if folder.is_dir() else []
    return paths


def prepare_output(out: Path, run) -> None:
    """Check --out before sampling (the suffix this kind of run is written as) and create its folder."""
    if run.dataset.kind == "points" and out.suffix != ".npz":
        raise ConfigError(f"2D samples are written as .npz; got --out {str(out)!r}")
    if run.dataset.kind != "points" and out.suffix.lower() != ".png":
        raise ConfigError(f"image samples are written as a .png grid; got --out {str(out)!r}")
    make_output_folder(out)


def write_samples(
    out: Path,
    x: torch.Tensor,
    run,
    cond,
    *,
    exact_metrics: bool = True,
    per_sample: bool = False,
    progress=None,
) -> None:
    """2D samples as OUT.npz (+ a scatter plot, + the exact metrics where the data has a known
    density); image samples as a PNG grid (+ per-sample PNGs, + a GIF from the recorded `progress`)."""
    import numpy as np
    import torch

    prepare_output(out, run)
    if run.dataset.kind == "points":
        labels = None if cond is None else np.asarray(torch.as_tensor(cond).expand(len(x)))
        arrays = {"samples": x.numpy()}
        if labels is not None:
            arrays["labels"] = labels
        try:
            atomic_write_file(out, lambda f: np.savez(f, **arrays))
        except OSError as e:
            raise output_error(out, e) from None
        if x.shape[1] == 2:
            from diffguide.plots.points import save_scatter

            png = out.with_suffix(".png")
            save_scatter(
                png, x, f"{run.config.name}: {len(x)} samples", mixture=run.dataset.mixture, labels=labels
            )
            print(f"wrote {out} and {png}")
        else:
            print(f"wrote {out}")
        if exact_metrics and getattr(run.dataset, "mixture", None) is not None:
            write_exact_metrics(out, x, run, labels)
        return
    from diffguide.plots.images import save_image_samples

    save_image_samples(out, x, per_sample=per_sample, progress=progress)
