"""`diffguide sample --diffusers DIR`: sample a local diffusers model folder instead of a run.

The folder loads through `diffguide.adapters.diffusers.load_diffusers` (a UNet2DModel or
UNet2DConditionModel with its scheduler config; nothing is downloaded) and is sampled by
`diffguide.samplers.generation.generate`, exactly as the library path `generate(load_diffusers(DIR).denoiser, ...)`.
Options that need a run (its checkpoints, its null class, its attribute vocabulary) are refused
with a message. Conditions: --class K for class-conditional UNets (num_class_embeds);
--encoder-hidden-states FILE, which a UNet2DConditionModel needs (e.g. a text encoder's output, the
same for every sample). Guidance: --guidance auto with --guide DIR (a weaker diffusers model of the
same kind and shape) is autoguidance; --guidance cfg on a UNet2DConditionModel uses
--null-encoder-hidden-states FILE (default zeros) as the null condition; cfg+auto is both. The guided
denoiser comes from the one guidance builder, diffguide.guidance.spec, as for run folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffguide.cli.common import check_outputs, conditions_to, grid_overrides, make_output_folder
from diffguide.cli.progress import progress_bar, sampling_callback
from diffguide.cli.tune_grid import guidance_record
from diffguide.errors import ConfigError, output_error
from diffguide.io import atomic_write_file

if TYPE_CHECKING:  # numpy and torch are imported by the commands: the parser stays fast
    import torch

DEFAULT_SAMPLER = "dpmpp-2m"
DEFAULT_STEPS = 32
DEFAULT_GRID = "karras"
DIFFUSERS_N = 1000  # sample --diffusers without --n


def add_sample_args(p) -> None:
    p.add_argument(
        "--diffusers",
        metavar="DIR",
        help="sample a local diffusers model folder (pipeline or UNet + scheduler_config.json) instead of "
        f"a run; defaults --sampler {DEFAULT_SAMPLER} --steps {DEFAULT_STEPS} --grid {DEFAULT_GRID}",
    )
    p.add_argument(
        "--encoder-hidden-states",
        metavar="FILE",
        help="with --diffusers and a UNet2DConditionModel: the condition (e.g. a text embedding) as .npy or "
        ".safetensors of shape [L, D] or [1, L, D], used for every sample",
    )
    p.add_argument(
        "--null-encoder-hidden-states",
        metavar="FILE",
        help="with --diffusers, a UNet2DConditionModel and --guidance cfg: the null condition, same format "
        "(default zeros shaped like --encoder-hidden-states; text models want the empty-prompt embedding)",
    )


HIDDEN_STATES_SHAPE = "shape [L, D] or [1, L, D]"


def load_hidden_states(path: str, flag: str, dim: int | None) -> torch.Tensor:
    """A .npy / .safetensors file of encoder hidden states as a float32 [1, L, D] tensor."""
    import numpy as np
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise ConfigError(f"{flag} takes a .npy or .safetensors file, got {path!r}")
    if not file.is_file():
        raise ConfigError(f"{flag} file {path!r} does not exist")
    try:
        if suffix == ".npy":
            value = torch.from_numpy(np.load(file, allow_pickle=False))
        else:
            tensors = load_file(str(file))
            if "encoder_hidden_states" in tensors:
                value = tensors["encoder_hidden_states"]
            elif len(tensors) == 1:
                (value,) = tensors.values()
            else:
                raise ConfigError(
                    f"{flag} file {path!r} holds tensors {sorted(tensors)}; give one tensor, or name it "
                    "'encoder_hidden_states'"
                )
    except (ValueError, OSError, SafetensorError) as e:
        raise ConfigError(f"{flag} file {path!r} is not a readable {suffix} array ({e})") from None
    if not value.is_floating_point():
        raise ConfigError(f"{flag} must hold floating-point values, got {value.dtype} in {path!r}")
    if value.ndim == 2:
        value = value[None]
    if value.ndim != 3 or value.shape[0] != 1 or value.shape[1] < 1:
        raise ConfigError(f"{flag} must have {HIDDEN_STATES_SHAPE}, got {list(value.shape)} in {path!r}")
    if dim is not None and value.shape[2] != dim:
        raise ConfigError(
            f"{flag} has D = {value.shape[2]} but the model's cross-attention takes D = {dim} "
            f"(shape [L, {dim}]), in {path!r}"
        )
    if not bool(torch.isfinite(value).all()):
        raise ConfigError(f"{flag} holds NaN or infinite values, in {path!r}")
    return value.float()


# options of `sample` that only make sense for a diffguide run: (attribute, flag, why)
RUN_ONLY = [
    ("checkpoint", "--checkpoint", "a diffusers folder holds one set of weights"),
    ("raw", "--raw", "a diffusers folder has no separate EMA weights"),
    ("attr_type", "--type", "attribute conditions are for CryptoPunks runs"),
    ("accessory", "--accessory", "attribute conditions are for CryptoPunks runs"),
    (
        "inpaint",
        "--inpaint",
        "inpainting from the CLI needs a run (use diffguide.samplers.inpaint in Python)",
    ),
    ("mask", "--mask", "inpainting from the CLI needs a run (use diffguide.samplers.inpaint in Python)"),
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
    args.n = DIFFUSERS_N if args.n is None else args.n  # a diffusers folder has no sampling defaults
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.suffix.lower() not in (".npz", ".png"):
        raise ConfigError(
            f"diffusers samples are written as .npz (with a .png grid next to it) or as a .png grid; "
            f"got --out {str(out)!r}"
        )


def _unet_config(model) -> dict:
    return model.denoiser.net.unet.config


def hidden_states_dim(model) -> int | None:
    """D of the encoder hidden states a UNet2DConditionModel takes (None where it is not one number)."""
    config = _unet_config(model)
    dim = config.get("encoder_hid_dim") or config.get("cross_attention_dim")
    return dim if isinstance(dim, int) else None


def build_condition(args, model, n: int):
    """(cond for generate, class labels [n] or None) from --class and --encoder-hidden-states."""
    text_model = model.unet_class == "UNet2DConditionModel"
    file = getattr(args, "encoder_hidden_states", None)
    if file is not None and not text_model:
        raise ConfigError(
            f"--encoder-hidden-states is for a UNet2DConditionModel; {args.diffusers!r} holds a {model.unet_class}"
        )
    hidden = None
    if text_model:
        dim = hidden_states_dim(model)
        if file is None:
            shape = f"shape [L, {dim}] or [1, L, {dim}]" if dim else HIDDEN_STATES_SHAPE
            raise ConfigError(
                f"{args.diffusers!r} holds a UNet2DConditionModel, which needs a condition: pass "
                f"--encoder-hidden-states FILE (.npy or .safetensors, {shape}, e.g. a text encoder's "
                "output for the prompt)"
            )
        hidden = load_hidden_states(file, "--encoder-hidden-states", dim).expand(n, -1, -1)
    labels = class_labels(args, model, n)
    if hidden is not None and labels is not None:
        return {"encoder_hidden_states": hidden, "class_labels": labels}, labels
    return (hidden if hidden is not None else labels), labels


def class_labels(args, model, n: int):
    """--class K for a class-conditional UNet (num_class_embeds), as labels [n]; required by such a UNet."""
    import torch

    classes = _unet_config(model).get("num_class_embeds") or 0
    if getattr(args, "class_label", None) is None:
        if classes:
            raise ConfigError(
                f"{args.diffusers!r} holds a class-conditional {model.unet_class} ({classes} classes, "
                f"num_class_embeds): pass --class K with K in 0..{classes - 1}"
            )
        return None
    if not classes:
        raise ConfigError(
            f"--class needs a class-conditional UNet2DModel (num_class_embeds); {args.diffusers!r} has none"
        )
    if not 0 <= args.class_label < classes:
        raise ConfigError(f"--class must be in 0..{classes - 1}, got {args.class_label}")
    return torch.full((n,), args.class_label, dtype=torch.long)


def guided_denoiser(args, model):
    """The model's denoiser or the guidance builder's around it: autoguidance by a weaker diffusers model
    (--guidance auto --guide DIR), classifier-free guidance of a UNet2DConditionModel by its null condition
    (--guidance cfg, --null-encoder-hidden-states FILE, else zeros shaped like the condition), or both
    (cfg+auto)."""
    from dataclasses import replace

    from diffguide.cli.guidance_args import CLI_NAMES, guidance_spec
    from diffguide.guidance.spec import build_guided, check

    spec = guidance_spec(args)
    null_file = getattr(args, "null_encoder_hidden_states", None)
    check(replace(spec, null=null_file), model, CLI_NAMES)  # refused before the file is read
    if null_file is not None:
        spec.null = load_hidden_states(null_file, "--null-encoder-hidden-states", hidden_states_dim(model))
    return build_guided(model, spec, names=CLI_NAMES)


def sampling_grid(args, model):
    """(sigmas, sampler name): --grid NAME (default karras) with --steps, or --grid FILE, a grid file
    checked against the model's DDPM noise range; the sampler is --sampler, else the file's, else
    the default."""
    from diffguide.cli.tune_grid import grid_file_for_sampling
    from diffguide.samplers.generation import sigma_grid
    from diffguide.samplers.grid_file import looks_like_grid_file

    if not args.grid or not looks_like_grid_file(args.grid):
        steps = DEFAULT_STEPS if args.steps is None else args.steps
        sigmas = sigma_grid(args.grid or DEFAULT_GRID, steps, model.process, *grid_overrides(args))
        return sigmas, args.sampler or DEFAULT_SAMPLER
    grid = grid_file_for_sampling(
        args,
        default_sampler=DEFAULT_SAMPLER,
        process=model.process,
        sigma_min=model.process.sigma_min,
        sigma_max=model.process.sigma_max,
        run=str(Path(args.diffusers).resolve()),
        guidance=guidance_record(args),
    )
    return grid.sigmas, args.sampler or grid.sampler or DEFAULT_SAMPLER


def cmd_sample_diffusers(args, device="cpu") -> int:
    import numpy as np

    from diffguide.adapters.diffusers import load_diffusers
    from diffguide.guidance.spec import sampler_for
    from diffguide.plots.images import ProgressRecorder, save_image_samples
    from diffguide.samplers.generation import generate
    from diffguide.samplers.registry import sampler_options

    check_args(args)
    out = Path(args.out)
    beside = [out.with_suffix(".png")] if out.suffix.lower() == ".npz" else []
    if getattr(args, "gif", False):
        beside.append(out.with_suffix(".gif"))
    check_outputs(out, beside, "sample", args.force)
    make_output_folder(out)
    model = load_diffusers(args.diffusers, device=device)
    sigmas, sampler = sampling_grid(args, model)
    options = sampler_options(sampler, getattr(args, "sampler_option", []))
    cond, labels = build_condition(args, model, args.n)
    denoiser = guided_denoiser(args, model)
    callback = None
    if getattr(args, "gif", False):
        callback = ProgressRecorder(keep=min(16, args.n))
    with progress_bar(args.n, "sampling", "samples", enabled=not getattr(args, "no_progress", False)) as bar:
        x = generate(
            denoiser, args.n, model.shape, sigmas=sigmas,
            sampler=sampler_for(denoiser, sampler),  # CFG++ brings its own step
            seed=args.seed, cond=conditions_to(cond, device), batch_size=args.batch_size, device=device,
            callback=sampling_callback(bar, len(sigmas) - 1, callback), sampler_kwargs=options,
        )  # [n, C, H, W], in the model's data range (usually [-1, 1])  # fmt: skip
    if out.suffix.lower() == ".npz":
        arrays = {"samples": x.numpy()}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        try:
            atomic_write_file(out, lambda f: np.savez(f, **arrays))
        except OSError as e:
            raise output_error(out, e) from None
        print(f"wrote {out}")
        out = out.with_suffix(".png")
    save_image_samples(out, x, per_sample=getattr(args, "per_sample", False), progress=callback)
    return 0
