"""`diffguide export-diffusers RUN OUT_DIR`: write a DDPM or rectified-flow U-Net run as a diffusers
DDPMPipeline folder."""

from __future__ import annotations

import json

from diffguide.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "export-diffusers",
        help="write a DDPM or flow U-Net run as a folder diffusers loads (UNet2DModel + DDPMScheduler or "
        "FlowMatchEulerDiscreteScheduler)",
        description="Export a run to a DDPMPipeline folder: unet/ (config.json, "
        "diffusion_pytorch_model.safetensors), scheduler/scheduler_config.json, model_index.json. The "
        "weights map exactly for DDPM runs with target eps, v or x0 (DDPMScheduler) and flow runs with "
        "target velocity (FlowMatchEulerDiscreteScheduler), class labels or no condition, one GroupNorm "
        "group count for every layer (model.norm_groups) and positional noise embedding; any other run is "
        "refused with every reason listed. See diffguide.adapters.export and docs/interop.md.",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("out", nargs="?", help="output folder (new or empty); or --out, as on the other commands")
    p.add_argument("--out", dest="out_option", metavar="OUT", help="output folder (new or empty)")
    p.add_argument("--checkpoint", help="checkpoint file (default: latest good)")
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    p.set_defaults(func=cmd_export_diffusers)


def cmd_export_diffusers(args) -> int:
    from diffguide.adapters.export import export_run

    if (args.out is None) == (args.out_option is None):
        raise ConfigError(
            "give the output folder once: `export-diffusers RUN OUT` or `export-diffusers RUN --out OUT`"
            + ("" if args.out is None else f" (got {args.out!r} and --out {args.out_option!r})")
        )
    out = export_run(args.run, args.out or args.out_option, args.checkpoint, use_ema=not args.raw)
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    print(
        f"wrote {out} (model_index.json, unet/, scheduler/ with a {scheduler}); load it with "
        f"diffusers.DDPMPipeline.from_pretrained({str(out)!r}) or `diffguide sample --diffusers {out}`"
    )
    return 0
