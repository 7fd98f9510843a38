"""Export a diffguide U-Net run to a folder diffusers loads: UNet2DModel + DDPMScheduler or
FlowMatchEulerDiscreteScheduler.

Our U-Net (nets/unet.py) and diffusers' `UNet2DModel` are the same DDPM/ADM network when diffusers is
configured as ours is built: scale-shift residual blocks (`resnet_time_scale_shift="scale_shift"`),
self-attention after the residual blocks of chosen levels and in the middle, stride-2 conv down,
nearest + conv up, `num_blocks + 1` blocks per up level, the sinusoidal timestep embedding in
[cos, sin] order (`flip_sin_to_cos=True, freq_shift=0`) through Linear-SiLU-Linear, class labels as an
embedding added to it (our null class is the last row), GroupNorm eps 1e-6. The mapping is then
weight for weight (`diffusers_state_dict`); what it needs is checked on the network's modules
themselves (`export_problems`), and every reason it cannot map is reported at once:

- one GroupNorm group count for every layer (diffusers' `norm_num_groups`): our default min(32, C/4)
  per layer gives one count only when every layer has >= 128 channels; `model.norm_groups` fixes it;
- one attention head size for every attention layer (diffusers' `attention_head_dim`);
- the noise embedding as wide as the first level (`channel_mult[0] = 1`) and sinusoidal;
- sizes divisible by 2^(levels - 1) (diffusers upsamples by exactly 2, we resize to the skip's size);
- class labels or no condition (attribute dicts and the condition map's extra input channels have no
  diffusers counterpart);
- a DDPM process (diffusers' timestep t) with target eps, v or x0 (`prediction_type`), or the flow
  process with the velocity target (FlowMatchEulerDiscreteScheduler: x_t = (1 - t) x0 + t eps, the
  model told the timestep 1000 t, which is our flow c_noise, and predicting eps - x0, our velocity);
  EDM's c_skip/c_out mixing and the VP/VE SDE processes have no diffusers scheduler equivalent.

The folder is a DDPMPipeline: model_index.json, unet/ (config.json, diffusion_pytorch_model.safetensors)
and scheduler/scheduler_config.json. DDPMPipeline's loop (noise, set_timesteps, UNet, step) is the
flow-matching Euler loop when its scheduler is FlowMatchEulerDiscreteScheduler. Writing the folder
needs no diffusers; loading it is diffusers' job.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from diffguide.adapters.diffusers import FLOW_SIGMA_RANGE_KEY
from diffguide.errors import ConfigError, output_error
from diffguide.io import atomic_save_tensors, atomic_write_text
from diffguide.models.nets.embedding import PositionalEmbedding
from diffguide.models.nets.unet import Attention, Downsample, UNet, Upsample
from diffguide.models.runs import load_run
from diffguide.processes import DDPM, FlowProcess

# diffguide target -> diffusers prediction_type (the inverse of diffusers.PREDICTION_TARGETS)
TARGET_TO_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SCHEDULE_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2"}
RESNET_NAMES.update({"conv2": "conv2", "skip": "conv_shortcut"})
MIN_DIFFUSERS = "0.30.0"  # the oldest diffusers pyproject allows; written when diffusers is not installed


class _Levels:
    """Our U-Net's down/up module lists grouped by resolution level, as diffusers' blocks are."""

    def __init__(self, net: nn.Module):

        self.down = [[]]  # per level: [(index in net.down, layer)]; the level's Downsample separately
        self.downsample = []
        for k, layer in enumerate(net.down):
            if isinstance(layer[0], Downsample):
                self.downsample.append(k)
                self.down.append([])
            else:
                self.down[-1].append((k, layer))
        self.up = [[]]  # deepest level first, as diffusers' up_blocks
        self.upsample = []
        for k, layer in enumerate(net.up):
            if isinstance(layer[0], Upsample):
                self.upsample.append(k)
                self.up.append([])
            else:
                self.up[-1].append((k, layer))


def _block_type(layers, kind: str) -> str:
    """diffusers' block class for one level's layers: with attention if they have any."""
    return f"Attn{kind}Block2D" if any(len(layer) > 1 for _, layer in layers) else f"{kind}Block2D"


def export_problems(net: nn.Module, process, target: str, sample_shape: tuple[int, ...]) -> list[str]:
    """Every reason a denoiser (net, process, target) cannot be written as UNet2DModel + DDPMScheduler
    (DDPM process) or UNet2DModel + FlowMatchEulerDiscreteScheduler (flow process).

    Empty: it maps exactly. Checked on the network's modules themselves, not on a config.
    """
    return _process_problems(process, target) + _network_problems(net, sample_shape)


def _process_problems(process, target: str) -> list[str]:

    if isinstance(process, FlowProcess):
        if target == "velocity":
            return []
        return [
            f"it is a flow run with target {target!r}, but FlowMatchEulerDiscreteScheduler's model predicts "
            "the velocity eps - x0: train with diffusion.loss.target='velocity'"
        ]
    problems = []
    if target == "edm":
        problems.append(
            "it is EDM-preconditioned (c_skip x + c_out F(c_in x, log(sigma) / 4)), which no diffusers "
            "prediction_type expresses: train with diffusion.loss.target eps, v or x0"
        )
    elif target not in TARGET_TO_PREDICTION:
        problems.append(
            f"its target {target!r} has no DDPMScheduler prediction_type; eps, v and x0 map to "
            f"{', '.join(TARGET_TO_PREDICTION.values())} (velocity maps under the flow process)"
        )
    if not isinstance(process, DDPM):
        problems.append(
            f"its noise process is {getattr(process, 'name', type(process).__name__)!r}; diffusers' "
            "schedulers need the discrete DDPM process (diffusion.process.name='ddpm', DDPMScheduler) "
            "or rectified flow ('flow' with target velocity, FlowMatchEulerDiscreteScheduler)"
        )
    return problems


def _network_problems(net: nn.Module, sample_shape: tuple[int, ...]) -> list[str]:

    if not isinstance(net, UNet):
        return [f"its network is a {type(net).__name__}, not diffguide's U-Net (model.arch='unet')"]
    problems = []
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    groups = sorted({m.num_groups for m in norms})
    if len(groups) > 1:
        channels = sorted({m.num_channels for m in norms})
        problems.append(
            f"its GroupNorms have {groups} groups (min(32, C/4) for layers of {channels} channels) where "
            "UNet2DModel has one norm_num_groups for every layer: train with model.norm_groups set to a "
            "divisor of every channel count (e.g. 32 when all levels have >= 128 channels)"
        )
    head_dims = sorted({m.qkv.in_channels // m.heads for m in net.modules() if isinstance(m, Attention)})
    if len(head_dims) > 1:
        problems.append(
            f"its attention layers have heads of {head_dims} channels where UNet2DModel has one "
            "attention_head_dim: use attention only at levels with a multiple of 32 channels"
        )
    embedding = net.noise_emb[0]
    if not isinstance(embedding, PositionalEmbedding):
        problems.append(
            f"its noise embedding is {type(embedding).__name__} (model.embedding='fourier'); UNet2DModel's "
            "Fourier projection differs (log t input, other scale): use model.embedding='positional'"
        )
    width = net.conv_in.out_channels
    if net.noise_emb[1].in_features != width:
        problems.append(
            f"its noise embedding has {net.noise_emb[1].in_features} channels but the first level "
            f"{width}; UNet2DModel's is as wide as the first level: use model.channel_mult starting at 1"
        )
    if net.cond_emb.type_emb is not None or net.cond_emb.accessory_proj is not None:
        problems.append(
            "it is conditioned on attribute dicts (type + accessories), which UNet2DModel cannot take "
            "(it has class labels only)"
        )
    if net.cond_map is not None:
        problems.append(
            f"it feeds a learned condition map of {net.conv_in.in_channels - net.conv_out.out_channels} "
            "channels to its first layer (model.cond_map_channels), an input UNet2DModel does not have: "
            "train with model.cond_map_channels=0"
        )
    levels = len(_Levels(net).down)
    factor = 2 ** (levels - 1)
    size = tuple(int(v) for v in sample_shape[1:])
    if any(v % factor for v in size):
        problems.append(
            f"its samples are {'x'.join(map(str, size))} but {levels} levels need sizes divisible by "
            f"{factor}: UNet2DModel upsamples by exactly 2 where ours resizes to the skip connection"
        )
    return problems


def _attention_tensors(attention: nn.Module) -> dict[str, torch.Tensor]:
    """Our fused 1x1-conv qkv and proj as diffusers' to_q/to_k/to_v/to_out.0 linear layers."""
    c = attention.proj.out_channels
    weight, bias = attention.qkv.weight.reshape(3 * c, c), attention.qkv.bias
    out = {"group_norm.weight": attention.norm.weight, "group_norm.bias": attention.norm.bias}
    for i, name in enumerate(("to_q", "to_k", "to_v")):  # qkv's output channels are [q | k | v]
        out[f"{name}.weight"] = weight[i * c : (i + 1) * c]
        out[f"{name}.bias"] = bias[i * c : (i + 1) * c]
    out["to_out.0.weight"] = attention.proj.weight.reshape(c, c)
    out["to_out.0.bias"] = attention.proj.bias
    return out


def _resnet_tensors(block: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{RESNET_NAMES[name.split('.')[0]]}.{name.split('.', 1)[1]}": tensor
        for name, tensor in block.state_dict().items()
    }


def diffusers_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """Our U-Net's weights under UNet2DModel's parameter names (check export_problems first)."""
    levels = _Levels(net)
    tensors = {}

    def put(prefix: str, parts: dict[str, torch.Tensor]):
        tensors.update({f"{prefix}.{name}": t for name, t in parts.items()})

    put("time_embedding.linear_1", net.noise_emb[1].state_dict())
    put("time_embedding.linear_2", net.noise_emb[3].state_dict())
    if net.cond_emb.class_emb is not None:
        tensors["class_embedding.weight"] = net.cond_emb.class_emb.weight
    put("conv_in", net.conv_in.state_dict())
    for block_name, blocks, resamplers, resampler_name in (
        ("down_blocks", levels.down, levels.downsample, "downsamplers"),
        ("up_blocks", levels.up, levels.upsample, "upsamplers"),
    ):
        layers = net.down if block_name == "down_blocks" else net.up
        for i, block in enumerate(blocks):
            for j, (_, layer) in enumerate(block):
                put(f"{block_name}.{i}.resnets.{j}", _resnet_tensors(layer[0]))
                if len(layer) > 1:
                    put(f"{block_name}.{i}.attentions.{j}", _attention_tensors(layer[1]))
            if i < len(resamplers):
                put(f"{block_name}.{i}.{resampler_name}.0.conv", layers[resamplers[i]][0].conv.state_dict())
    put("mid_block.resnets.0", _resnet_tensors(net.mid[0]))
    put("mid_block.attentions.0", _attention_tensors(net.mid[1]))
    put("mid_block.resnets.1", _resnet_tensors(net.mid[2]))
    put("conv_norm_out", net.norm_out.state_dict())
    put("conv_out", net.conv_out.state_dict())
    return {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in tensors.items()}


def diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # not installed: any version diffusers accepts
        return MIN_DIFFUSERS


def unet_config(net: nn.Module, sample_shape: tuple[int, ...]) -> dict:
    """UNet2DModel's config.json for our U-Net (check export_problems first)."""

    levels = _Levels(net)
    widths = [block[0][1][0].conv1.out_channels for block in levels.down]
    attention = [m for m in net.modules() if isinstance(m, Attention)]
    head_dim = attention[0].qkv.in_channels // attention[0].heads
    groups = next(m for m in net.modules() if isinstance(m, nn.GroupNorm))
    size = tuple(int(v) for v in sample_shape[1:])
    num_classes = net.cond_emb.num_classes
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": diffusers_version(),
        "sample_size": size[0] if size[0] == size[1] else list(size),
        "in_channels": net.conv_in.in_channels,
        "out_channels": net.conv_out.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": net.noise_emb[3].out_features,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": [_block_type(layers, "Down") for layers in levels.down],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": [_block_type(layers, "Up") for layers in levels.up],
        "block_out_channels": widths,
        "layers_per_block": len(levels.down[0]),
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": float(net.mid[0].drop.p),
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": groups.num_groups,
        "attn_norm_num_groups": groups.num_groups,
        "norm_eps": groups.eps,
        "resnet_time_scale_shift": "scale_shift",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": num_classes + 1 if num_classes else None,  # + our null class, the last row
    }


def scheduler_config(process, target: str) -> dict:
    """The scheduler_config.json for a diffguide process and training target (check export_problems
    first): FlowMatchEulerDiscreteScheduler for the flow process, DDPMScheduler for DDPM."""
    if isinstance(process, FlowProcess):
        return flow_scheduler_config(process)
    return ddpm_scheduler_config(process, target)


def flow_scheduler_config(process: FlowProcess) -> dict:
    """FlowMatchEulerDiscreteScheduler's config for our flow process (the model predicts the velocity).

    diffusers' timestep is sigma_flow * num_train_timesteps with sigma_flow our t, and our network is
    told c_noise = 1000 t: num_train_timesteps is 1000. `shift` is the run's, so diffusers'
    set_timesteps(n) is our flow-shift grid (from t = 1 where ours starts at t(sigma_max)). The run's
    sigma range rides along under a private key diffusers ignores, so load_diffusers rebuilds the
    same process.
    """
    return {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": diffusers_version(),
        "num_train_timesteps": int(process.num_train_timesteps),
        "shift": float(process.shift),
        "use_dynamic_shifting": False,
        "invert_sigmas": False,
        "stochastic_sampling": False,
        FLOW_SIGMA_RANGE_KEY: [process.sigma_min, process.sigma_max],
    }


def ddpm_scheduler_config(process: DDPM, target: str) -> dict:
    """DDPMScheduler's scheduler_config.json for a diffguide DDPM process and training target.

    Named schedules stay named (diffusers recomputes the same betas in float32); a table made by
    `DDPM.from_alpha_bar` is written as trained_betas. clip_sample is off: our samplers do not clip.
    """
    config = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": diffusers_version(),
        "num_train_timesteps": int(process.T),
        "prediction_type": TARGET_TO_PREDICTION[target],
        "variance_type": "fixed_small",
        "clip_sample": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    if process.schedule in SCHEDULE_NAMES:
        config["beta_schedule"] = SCHEDULE_NAMES[process.schedule]
        if process.schedule == "linear":
            config["beta_start"] = float(process.betas[0])
            config["beta_end"] = float(process.betas[-1])
    else:
        config["trained_betas"] = process.betas.tolist()
    return config


def write_diffusers_folder(
    net: nn.Module,
    process,
    target: str,
    sample_shape: tuple[int, ...],
    out_dir: str | Path,
    what: str = "the model",
) -> Path:
    """Write a DDPMPipeline folder (unet/, scheduler/, model_index.json) for our U-Net and its DDPM or
    flow process (DDPMScheduler or FlowMatchEulerDiscreteScheduler).

    Refuses, listing every reason, what does not map exactly (export_problems); nothing is written then.
    """

    problems = export_problems(net, process, target, sample_shape)
    if problems:
        raise ConfigError(
            f"{what} cannot be exported to diffusers:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\n(docs/interop.md; for any model, EpsModelFromDenoiser(denoiser, process) lets diffusers' "
            "schedulers drive it in Python)"
        )
    out = Path(out_dir)
    _check_empty(out)
    scheduler = scheduler_config(process, target)
    files = {
        "model_index.json": {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": diffusers_version(),
            "scheduler": ["diffusers", scheduler["_class_name"]],
            "unet": ["diffusers", "UNet2DModel"],
        },
        "unet/config.json": unet_config(net, sample_shape),
        "scheduler/scheduler_config.json": scheduler,
    }
    try:
        for name, content in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / name, json.dumps(content, indent=2) + "\n")
        weights = out / "unet" / "diffusion_pytorch_model.safetensors"
        atomic_save_tensors(weights, diffusers_state_dict(net), {"format": "pt"})
    except OSError as e:
        raise output_error(out, e) from None
    return out


def _check_empty(out: Path) -> None:
    """export-diffusers writes only into a new or empty folder (docs/bad-input.md)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export folder {str(out)!r} is a file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"export folder {str(out)!r} already exists and is not empty; give a new or empty folder "
            "(export-diffusers replaces no file)"
        )


def export_run(
    run_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None, use_ema: bool = True
) -> Path:
    """Export a diffguide run (EMA weights of its latest good checkpoint by default) to a diffusers folder."""

    _check_empty(Path(out_dir))  # before the run is loaded
    run = load_run(run_dir, checkpoint, use_ema=use_ema)
    return write_diffusers_folder(
        run.denoiser.net,
        run.process,
        getattr(run.denoiser, "target", run.config.diffusion.loss.target),
        tuple(run.dataset.shape),
        out_dir,
        what=f"run {str(run_dir)!r}",
    )


__all__ = [
    "TARGET_TO_PREDICTION",
    "ddpm_scheduler_config",
    "diffusers_state_dict",
    "export_problems",
    "flow_scheduler_config",
    "export_run",
    "scheduler_config",
    "unet_config",
    "write_diffusers_folder",
]
