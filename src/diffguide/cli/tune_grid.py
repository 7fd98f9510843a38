"""`diffguide tune-grid RUN --sampler NAME --nfe N`: a sigma grid tuned to the model, as a JSON file;
and `sample --grid FILE`, which samples on such a file (see diffguide.samplers.tuning, docs/samplers.md).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

from diffguide.cli.common import add_device_arg, add_force_flag, add_threads_arg, check_json_output, device_of
from diffguide.cli.progress import add_progress_flag, count_callback, finish, progress_bar
from diffguide.errors import ConfigError, output_error

# the keys of diffguide.samplers.tuning.METHODS, written here so that --help imports no torch (a test
# checks the two agree)
METHOD_NAMES = ("gits+direct", "gits", "direct")


# the tuning effort by kind of run: an image network costs far more per evaluation than a 2D one
# (digits-cfg, iPNDM: 78 s at NFE 8 and 160 s at NFE 16 with the image defaults; docs/samplers.md)
TUNING_DEFAULTS = {
    "points": {
        "samples": 256,
        "max_evals": 300,
    },  # = samplers.tuning's DEFAULT_* (not imported: no torch here)
    "images": {"samples": 32, "max_evals": 100},
}


def tuning_effort(samples: int | None, max_evals: int | None, kind: str) -> tuple[int, int]:
    """(--samples, --max-evals): the values given, else the defaults of this kind of run."""
    defaults = TUNING_DEFAULTS["images" if kind == "images" else "points"]
    return (
        defaults["samples"] if samples is None else samples,
        defaults["max_evals"] if max_evals is None else max_evals,
    )


def add_parsers(sub) -> None:
    from diffguide.cli import condition_args, guidance_args

    p = sub.add_parser(
        "tune-grid",
        help="tune the sigma grid of a sampler and budget to a run (GITS / direct search); writes a grid file",
        description="Choose the sigma grid with the smallest error for this run, sampler, number of denoiser "
        "evaluations and guidance, against reference trajectories of the probability-flow ODE (GITS, Chen et "
        "al. 2024; a direct search as in Align Your Steps, Sabour et al. 2024). Writes a JSON grid file for "
        "`diffguide sample RUN --grid FILE`. See docs/samplers.md.",
    )
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--sampler", required=True, help="a deterministic sampler (euler, heun, ipndm, unipc, ...)"
    )
    p.add_argument("--nfe", type=int, required=True, help="number of denoiser evaluations the grid is for")
    p.add_argument(
        "--method", default="gits+direct", help=f"{' | '.join(METHOD_NAMES)} (default: gits+direct)"
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="reference trajectories tuned on (default 256 for 2D runs, 32 for image runs; as many again "
        "check the result)",
    )
    p.add_argument(
        "--max-evals",
        type=int,
        default=None,
        help="sampler runs per search start of the direct search (default 300 for 2D runs, 100 for image "
        "runs; the cost lever with --samples)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed of the reference trajectories")
    p.add_argument("--checkpoint", help="checkpoint file (default: latest good)")
    p.add_argument("--raw", action="store_true", help="use raw weights instead of the EMA")
    p.add_argument("--out", help="grid file to write (default: RUN/grids/SAMPLER-nfeN[-GUIDANCE].json)")
    add_force_flag(p, "tune-grid")
    add_progress_flag(p)
    add_device_arg(p)
    add_threads_arg(p)
    condition_args.add_condition_args(p)
    guidance_args.add_sample_args(p)
    p.set_defaults(func=cmd_tune_grid)


def guidance_record(args) -> dict:
    """The guidance options that shape the trajectories, as saved in a grid file ({} without guidance)."""
    from diffguide.cli import guidance_args

    kind = getattr(args, "guidance", "none") or "none"
    record = {}
    if kind != "none":
        record = {"kind": kind, "w": float(guidance_args.weight(args))}
        if kind == "cfg+auto" and getattr(args, "w_cfg", None) is not None:
            record["w_cfg"] = float(args.w_cfg)
        for name in ("guide", "interval"):
            if getattr(args, name, None) is not None:
                record[name] = getattr(args, name)
        if getattr(args, "rescale", 0.0):
            record["rescale"] = float(args.rescale)
    if getattr(args, "clip_denoised", None):
        record["clip_denoised"] = list(args.clip_denoised)
    if getattr(args, "class_label", None) is not None:
        record["class"] = args.class_label
    return record


def checkpoint_sha256(path: Path) -> str:
    """sha256 of the checkpoint file's bytes: the grid's model, wherever the run folder is moved."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_out(args) -> Path:
    suffix = f"-{args.guidance}" if (getattr(args, "guidance", "none") or "none") != "none" else ""
    return Path(args.run) / "grids" / f"{args.sampler}-nfe{args.nfe}{suffix}.json"


def grid_provenance(args, run, tuned) -> dict:
    """What a grid file records besides its sigmas: the run, checkpoint digest, sampler, NFE, guidance,
    method and the measured errors."""
    from diffguide import __version__

    return {
        "run": str(Path(args.run).resolve()),
        "checkpoint": str(run.checkpoint),
        "checkpoint_sha256": checkpoint_sha256(run.checkpoint),
        "ema": not args.raw,
        "process": run.process.name,
        "sampler": tuned.sampler,
        "nfe": tuned.nfe,
        "steps": tuned.steps,
        "guidance": guidance_record(args),
        "method": tuned.method,
        "chosen": tuned.chosen,
        "baseline": tuned.baseline,
        "error_before": tuned.error_before,
        "error_after": tuned.error_after,
        "errors": tuned.errors,
        "error_measure": f"RMS distance to the ODE reference end point, {tuned.samples} validation samples",
        "tuning_seconds": round(tuned.seconds, 1),
        "samples": tuned.samples,
        "max_evals": args.max_evals,
        "seed": tuned.seed,
        "written_by": "diffguide tune-grid",
        "diffguide_version": __version__,
    }


def _is_grid_file(path: Path) -> bool:
    """Whether `path` is a grid file (samplers.grid_file.FORMAT, written here so --help imports no
    torch), whichever diffguide version wrote it."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > 2**24:  # grid files are small
            return False
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == "diffguide-grid"


def cmd_tune_grid(args) -> int:
    import torch

    from diffguide.cli import condition_args, guidance_args
    from diffguide.errors import lookup
    from diffguide.models.runs import load_run
    from diffguide.samplers.grid_file import write_grid_file
    from diffguide.samplers.tuning import METHODS, check_tunable, tune_grid

    check_tunable(args.sampler, args.nfe)  # before loading anything
    lookup("tuning method", args.method, METHODS)
    for flag, value in (("--samples", args.samples), ("--max-evals", args.max_evals)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    device = device_of(args)
    out = Path(args.out) if args.out else default_out(args)
    if out.suffix.lower() != ".json" or out.is_dir():
        raise ConfigError(f"a grid file is written as .json; got --out {str(out)!r}")
    # an earlier grid file (also one from before written_by named the command) is replaced without --force
    check_json_output(out, "tune-grid", force=args.force or _is_grid_file(out), example="grid.json")
    run = load_run(args.run, args.checkpoint, use_ema=not args.raw, device=device)
    args.samples, args.max_evals = tuning_effort(args.samples, args.max_evals, run.dataset.kind)
    cond = condition_args.build_condition(args, run, 1)
    if cond is not None and not isinstance(cond, int):
        raise ConfigError(
            "tune-grid takes --class K; attribute conditions (--type, --accessory) are not supported"
        )
    denoiser = guidance_args.guided_denoiser(args, run)
    s = run.config.sample
    sigma_min = s.sigma_min or run.process.sigma_min
    sigma_max = s.sigma_max or run.process.sigma_max
    print(f"tuning {args.sampler} at {args.nfe} evaluations for {run.config.name} ({args.method}) ...")
    with progress_bar(0, "tuning", "evaluations", enabled=not args.no_progress) as bar:
        tuned = tune_grid(
            denoiser, tuple(run.dataset.shape), args.sampler, args.nfe, sigma_min=sigma_min,
            sigma_max=sigma_max, rho=s.rho, cond=cond, method=args.method,
            dtype=torch.float32,  # a network's own precision, as `sample` runs it
            samples=args.samples, seed=args.seed, device=device, progress=count_callback(bar),
            max_evals=args.max_evals,
        )  # fmt: skip
        finish(bar)
    provenance = grid_provenance(args, run, tuned)
    try:
        write_grid_file(out, tuned.sigmas, **provenance)
    except OSError as e:
        raise output_error(out, e) from None
    print(
        f"error {tuned.error_before:.4g} on the Karras grid -> {tuned.error_after:.4g} ({tuned.chosen}; "
        f"{tuned.error_after / tuned.error_before:.2f}x) in {tuned.seconds:.0f} s"
    )
    print("sigmas: " + ", ".join(f"{v:.4g}" for v in tuned.sigmas.tolist()))
    print(f"wrote {out}; sample with: diffguide sample {args.run} --grid {out} --out ...")
    return 0


def sampling_grid(args, run, steps: int):
    """(sigmas, the grid file's sampler or None) for `sample`: --grid NAME builds a named grid;
    --grid FILE reads a grid file, refuses one that does not fit the run's process and warns where it
    was tuned for something else."""
    from diffguide.cli.common import grid_overrides
    from diffguide.samplers.generation import sigma_grid
    from diffguide.samplers.grid_file import looks_like_grid_file

    s = run.config.sample
    if not args.grid or not looks_like_grid_file(args.grid):
        return sigma_grid(args.grid or s.grid, steps, run.process, *grid_overrides(args, s)), None
    grid = grid_file_for_sampling(
        args,
        default_sampler=s.sampler,
        process=run.process,
        sigma_min=min(run.process.sigma_min, s.sigma_min or math.inf),  # the range tune-grid tunes in
        sigma_max=max(run.process.sigma_max, s.sigma_max or 0.0),
        checkpoint_sha256=lambda: checkpoint_sha256(run.checkpoint),
        run=str(Path(args.run).resolve()),
        guidance=guidance_record(args),
    )
    return grid.sigmas, grid.sampler or None


def grid_file_for_sampling(
    args, *, default_sampler: str, process, sigma_min: float, sigma_max: float, checkpoint_sha256=None,
    run: str = "", guidance=None,
):  # fmt: skip
    """The grid file of --grid FILE, checked against the other options (--steps and the grid bounds are
    the file's) and the model's noise range [sigma_min, sigma_max]; a warning per thing it was tuned for
    that differs (sampler, run, guidance). checkpoint_sha256: a function giving the model's digest."""
    from diffguide.samplers.grid_file import check_grid_fits, grid_file_warnings, read_grid_file

    grid = read_grid_file(args.grid)
    given = [
        f"--{n.replace('_', '-')}"
        for n in ("steps", "sigma_min", "sigma_max", "rho")
        if getattr(args, n, None) is not None
    ]
    if given:
        raise ConfigError(
            f"--grid {args.grid} fixes the sigmas ({grid.steps} steps); leave out {', '.join(given)}"
        )
    check_grid_fits(grid, sigma_min=sigma_min, sigma_max=sigma_max, process=process.name)
    digest = checkpoint_sha256() if grid.checkpoint_sha256 and checkpoint_sha256 is not None else ""
    for message in grid_file_warnings(
        grid,
        sampler=args.sampler or grid.sampler or default_sampler,
        checkpoint_sha256=digest,
        run=run,
        guidance=guidance,
    ):
        warnings.warn(message, stacklevel=3)
    return grid
