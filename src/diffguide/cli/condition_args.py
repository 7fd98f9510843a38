"""Condition and image-output options of `sample` (and `eval`).

--class for class-conditional runs; --type and --accessory for attribute runs (CryptoPunks), names
checked against the run's vocabulary; --per-sample, --gif, --inpaint IMAGE --mask MASK for images.
"""

from __future__ import annotations

import warnings

from diffguide.errors import ConfigError


def add_condition_args(p) -> None:
    p.add_argument("--class", dest="class_label", type=int, help="class label for conditional runs")
    p.add_argument("--type", dest="attr_type", help="CryptoPunks type: alien, ape, zombie, female, male")
    p.add_argument(
        "--accessory",
        action="append",
        default=None,
        metavar="NAME",
        help='CryptoPunks accessory, repeatable (e.g. --accessory earring --accessory "blonde bob")',
    )


def add_sample_args(p) -> None:
    add_condition_args(p)
    g = p.add_argument_group("image output")
    g.add_argument(  # the PNG grid of samples is always written (--grid is the sigma grid)
        "--per-sample", action="store_true", help="also write one PNG per sample in OUT_STEM/"
    )
    g.add_argument(
        "--gif", action="store_true", help="also write OUT.gif: the denoising of the first samples"
    )
    g.add_argument(
        "--inpaint", metavar="IMAGE", help="inpaint this image: keep its known pixels (needs --mask)"
    )
    g.add_argument(
        "--mask",
        metavar="MASK",
        help="inpainting mask: an image (white = known, black = generate) or left/right/top/bottom/center/border",
    )


def build_condition(args, run, n: int):
    """The condition for n samples from the CLI options: None, a class for all, or an attribute dict."""
    class_label, attr_type, accessories = args.class_label, args.attr_type, args.accessory
    attrs = getattr(run.dataset, "attributes", None)
    if attr_type is not None or accessories:
        if attrs is None:
            raise ConfigError(
                f"run {run.config.name!r} is not conditioned on attributes; --type/--accessory are for "
                "conditional CryptoPunks runs" + (" (use --class)" if run.num_classes else "")
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cond = attrs.condition(n, attr_type, accessories)
        for w in caught:
            print(f"warning: {w.message}")
        return cond
    if class_label is None:
        return None
    if attrs is not None:
        raise ConfigError(f"run {run.config.name!r} is conditioned on attributes: use --type and --accessory")
    if not run.num_classes:
        raise ConfigError(f"run {run.config.name!r} is unconditional; --class is not available")
    if not 0 <= class_label < run.num_classes:
        raise ConfigError(f"--class must be in 0..{run.num_classes - 1}, got {class_label}")
    return class_label


def sampler_and_callback(args, run, sampler):
    """The sampler (wrapped for --inpaint) and the step callback: a ProgressRecorder of the frames
    for --gif, else None."""
    inpaint, mask = args.inpaint, args.mask
    if (inpaint is None) != (mask is None):
        raise ConfigError("--inpaint IMAGE and --mask MASK go together")
    callback = None
    if args.gif:
        from diffguide.plots.images import ProgressRecorder

        callback = ProgressRecorder(keep=min(16, args.n))
    if inpaint is None:
        return sampler, callback
    if run.dataset.kind != "images":
        raise ConfigError("--inpaint is for image runs")
    from diffguide.samplers.inpaint import inpainting_sampler, load_image, load_mask

    shape = tuple(run.dataset.shape)
    background = None
    if getattr(run.dataset, "attributes", None) is not None:
        from diffguide.data.punks import BACKGROUND

        background = BACKGROUND
    from diffguide.guidance.spec import model_device

    device = model_device(run.denoiser)  # --device: the image and mask go where the samples are
    known = load_image(inpaint, shape, background).to(device)
    return inpainting_sampler(sampler, known, load_mask(mask, shape).to(device)), callback
