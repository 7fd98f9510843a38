"""`diffguide sample --diffusers DIR`: sample a local diffusers model folder instead of a run.

The folder loads through `diffguide.adapters.diffusers.load_diffusers` (a UNet2DModel or
UNet2DConditionModel with its scheduler config; nothing is downloaded) and is sampled by
`diffguide.sampling.generate`, exactly as the library path `generate(load_diffusers(DIR).denoiser, ...)`.
Options that need a run (its checkpoints, its null class, its attribute vocabulary) are refused
with a message; --class works for class-conditional UNet2DModels, --guidance auto with --guide DIR
(a weaker diffusers model of the same shape) is autoguidance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, output_error
from .core import grid_overrides, make_output_folder

DEFAULT_SAMPLER = "dpmpp-2m"
DEFAULT_STEPS = 32
DEFAULT_GRID = "karras"


def add_sample_args(p) -> None:
    p.add_argument(
        "--diffusers",
        metavar="DIR",
        help="sample a local diffusers model folder (pipeline or UNet + scheduler_config.json) instead of "
        f"a run; defaults --sampler {DEFAULT_SAMPLER} --steps {DEFAULT_STEPS} --grid {DEFAULT_GRID}",
    )


# options of `sample` that only make sense for a diffguide run: (attribute, flag, why)
RUN_ONLY = [
    ("checkpoint", "--checkpoint", "a diffusers folder holds one set of weights"),
    ("raw", "--raw", "a diffusers folder has no separate EMA weights"),
    ("attr_type", "--type", "attribute conditions are for CryptoPunks runs"),
    ("accessory", "--accessory", "attribute conditions are for CryptoPunks runs"),
    ("inpaint", "--inpaint", "inpainting from the CLI needs a run (use diffguide.inpaint in Python)"),
    ("mask", "--mask", "inpainting from the CLI needs a run (use diffguide.inpaint in Python)"),
    ("w_cfg", "--w-cfg", "--guidance cfg+auto needs a class-conditional run"),
]


def check_args(args) -> None:
    """Refuse a run folder together with --diffusers, neither of them, and options that need a run."""
    if args.run is not None and args.diffusers is not None:
        raise ConfigError(
            f"give either a run folder ({args.run!r}) or --diffusers DIR ({args.diffusers!r}), not both"
        )
    if args.run is None and args.diffusers is None:
        raise ConfigError("nothing to sample: give a run folder, or --diffusers DIR for a diffusers model")
    for attr, flag, why in RUN_ONLY:
        if getattr(args, attr, None) not in (None, False, []):
            raise ConfigError(f"{flag} is not available with --diffusers: {why}")
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.suffix.lower() not in (".npz", ".png"):
        raise ConfigError(
            f"diffusers samples are written as .npz (with a .png grid next to it) or as a .png grid; "
            f"got --out {str(out)!r}"
        )


def class_condition(args, model, n: int):
    """--class K for a class-conditional UNet2DModel (num_class_embeds), as labels [n]."""
    if getattr(args, "class_label", None) is None:
        return None
    classes = model.denoiser.net.unet.config.get("num_class_embeds") or 0
    if not classes:
        raise ConfigError(
            f"--class needs a class-conditional UNet2DModel (num_class_embeds); {args.diffusers!r} has none"
        )
    if not 0 <= args.class_label < classes:
        raise ConfigError(f"--class must be in 0..{classes - 1}, got {args.class_label}")
    return torch.full((n,), args.class_label, dtype=torch.long)


def guided_denoiser(args, model):
    """The model's denoiser, or autoguidance by a weaker diffusers model (--guidance auto --guide DIR)."""
    from .. import guidance as G
    from ..adapters.diffusers import load_diffusers

    kind = getattr(args, "guidance", "none") or "none"
    rescale = getattr(args, "rescale", 0.0) or 0.0
    if kind == "none":
        if rescale:
            raise ConfigError("--rescale applies to --guidance auto with --diffusers, not none")
        return model.denoiser
    if kind != "auto":
        raise ConfigError(
            f"--guidance {kind} is not available with --diffusers (a diffusers UNet has no null condition "
            "the CLI knows); use --guidance auto --guide DIR, or diffguide.guidance in Python"
        )
    if getattr(args, "guide", None) is None:
        raise ConfigError("--guidance auto with --diffusers needs --guide DIR: a weaker diffusers model")
    guide = load_diffusers(args.guide)
    if guide.shape != model.shape:
        raise ConfigError(
            f"the guide {args.guide!r} makes {guide.shape} samples but the model makes {model.shape}"
        )
    w = G.check_weight(args.w, "--w")
    interval = G.check_interval(args.interval)
    return G.autoguidance(model.denoiser, guide.denoiser, w, interval=interval, rescale=rescale)


def cmd_sample_diffusers(args) -> int:
    from ..adapters.diffusers import load_diffusers
    from ..image_figures import ProgressRecorder, write_image_samples
    from ..samplers import sampler_options
    from ..sampling import generate, sigma_grid

    check_args(args)
    options = sampler_options(args.sampler or DEFAULT_SAMPLER, getattr(args, "sampler_option", []))
    out = Path(args.out)
    make_output_folder(out)
    model = load_diffusers(args.diffusers)
    denoiser = guided_denoiser(args, model)
    cond = class_condition(args, model, args.n)
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    sigmas = sigma_grid(args.grid or DEFAULT_GRID, steps, model.process, *grid_overrides(args))
    callback = None
    if getattr(args, "gif", False):
        callback = args.progress_recorder = ProgressRecorder(keep=min(16, args.n))
    x = generate(
        denoiser,
        args.n,
        model.shape,
        sigmas=sigmas,
        sampler=args.sampler or DEFAULT_SAMPLER,
        seed=args.seed,
        cond=cond,
        batch_size=args.batch_size,
        callback=callback,
        sampler_kwargs=options,
    )  # [n, C, H, W], in the model's data range (usually [-1, 1])
    if out.suffix.lower() == ".npz":
        arrays = {"samples": x.numpy()}
        if cond is not None:
            arrays["labels"] = cond.numpy()
        try:
            np.savez(out, **arrays)
        except OSError as e:
            raise output_error(out, e) from None
        print(f"wrote {out}")
        out = out.with_suffix(".png")
    write_image_samples(out, x, None, args)
    return 0
