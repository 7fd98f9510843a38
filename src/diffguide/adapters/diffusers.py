"""diffusers interop: a diffusers UNet and its scheduler config as a diffguide denoiser, and back.

A diffusers UNet trained under a discrete DDPM schedule sees x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
eps and the integer timestep t, and predicts eps, v or x0 (the scheduler's `prediction_type`). That
is a diffguide `ProcessPrecond` around a `DDPM.from_alpha_bar(scheduler.alphas_cumprod)` process. A
UNet of a FlowMatchEulerDiscreteScheduler sees x_t = (1 - t) x0 + t eps and the timestep
num_train_timesteps * t, and predicts the velocity eps - x0: a `ProcessPrecond` around our flow
process with target velocity. Every diffguide sampler, guidance combinator and metric runs on either.
The reverse direction, `EpsModelFromDenoiser`, lets diffusers' schedulers drive any diffguide denoiser
(parity tests and peer benchmarks use it). diffusers is imported lazily: this module imports without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffguide.denoiser import ProcessPrecond, append_dims, batch_sigma
from diffguide.errors import CheckpointError, ConfigError, lookup
from diffguide.processes import DDPM, FlowProcess, NoiseProcess

# diffusers' prediction_type -> diffguide's ProcessPrecond target
PREDICTION_TARGETS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"  # its model predicts the velocity eps - x0
# [sigma_min, sigma_max] of an exported flow run in its scheduler config; diffusers ignores "_" keys
FLOW_SIGMA_RANGE_KEY = "_diffguide_sigma_range"
FLOW_SIGMA_RANGE = (0.002, 80.0)  # FlowProcess's defaults, for flow folders that do not carry a range


def _require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            "the diffusers adapter needs the `diffusers` package: pip install diffusers"
        ) from None
    return diffusers


def process_from_scheduler_config(config: dict) -> DDPM:
    """The DDPM process of a diffusers scheduler config (any beta_schedule or trained_betas).

    The alpha_bar table is computed by diffusers' own DDPMScheduler from the config, so every beta
    schedule diffusers knows (linear, scaled_linear, squaredcos_cap_v2, sigmoid, trained_betas,
    rescale_betas_zero_snr) gives exactly the scheduler's float32 table, promoted to float64.
    """
    diffusers = _require_diffusers()
    keys = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "rescale_betas_zero_snr",
    )
    kwargs = {k: config[k] for k in keys if k in config and config[k] is not None}
    try:
        scheduler = diffusers.DDPMScheduler(**kwargs)
    except (NotImplementedError, ValueError) as e:
        raise ConfigError(f"cannot build the noise schedule of scheduler config {kwargs}: {e}") from None
    alpha_bar = scheduler.alphas_cumprod.to(torch.float64)
    if len(alpha_bar) >= 3 and float(alpha_bar[-1]) <= 0:
        # zero terminal SNR (Lin et al. 2023): alpha_bar = 0 is sigma = inf, which scale-free coordinates
        # cannot hold; extrapolate log alpha_bar linearly from the two previous steps instead (finite,
        # still decreasing; diffusers' Euler scheduler uses 2**-24, which breaks monotonicity here).
        alpha_bar[-1] = alpha_bar[-2] ** 2 / alpha_bar[-3]
    return DDPM.from_alpha_bar(alpha_bar)


def flow_process_from_scheduler_config(config: dict) -> FlowProcess:
    """The flow process of a FlowMatchEulerDiscreteScheduler config: x_t = (1 - t) x0 + t eps, the model
    told the timestep num_train_timesteps * t (diffusers' sigma * num_train_timesteps) and predicting
    eps - x0. `shift` is SD3's (our flow-shift grid); the sigma range is the exported run's where the
    config carries it (FLOW_SIGMA_RANGE_KEY), else FlowProcess's defaults.
    """
    if config.get("invert_sigmas"):
        raise ConfigError(
            f"{FLOW_SCHEDULER} with invert_sigmas=true (t = 1 at the data) is not rectified flow as "
            "diffguide's flow process has it (t = 0 at the data); a config with invert_sigmas=false maps"
        )
    sigma_range = config.get(FLOW_SIGMA_RANGE_KEY, FLOW_SIGMA_RANGE)
    steps = config.get("num_train_timesteps", FlowProcess.num_train_timesteps)
    try:
        sigma_min, sigma_max = (float(v) for v in sigma_range)
        process = FlowProcess(sigma_min, sigma_max, float(config.get("shift", 1.0)))
        steps = int(steps)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"cannot read the flow process of {FLOW_SCHEDULER} config (shift {config.get('shift')!r}, "
            f"num_train_timesteps {steps!r}, {FLOW_SIGMA_RANGE_KEY} {sigma_range!r}): {e}"
        ) from None
    if steps < 1:
        raise ConfigError(f"{FLOW_SCHEDULER} needs num_train_timesteps >= 1, got {steps}")
    process.num_train_timesteps = steps
    return process


def scheduler_process(config: dict) -> tuple[NoiseProcess, str]:
    """(process, ProcessPrecond target) of a scheduler config: the flow process and velocity for
    FlowMatchEulerDiscreteScheduler, else the DDPM table and prediction_type of any DDPM-type scheduler."""
    if config.get("_class_name") == FLOW_SCHEDULER:
        return flow_process_from_scheduler_config(config), "velocity"
    return process_from_scheduler_config(config), prediction_target(config)


def prediction_target(config: dict) -> str:
    """The ProcessPrecond target of a scheduler config's prediction_type (default epsilon)."""
    return lookup("diffusers prediction_type", config.get("prediction_type", "epsilon"), PREDICTION_TARGETS)


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel / UNet2DConditionModel as a diffguide network F(x_t, t, cond).

    cond: None; a float tensor [N, L, D] (encoder_hidden_states, e.g. text embeddings); an integer
    tensor [N] (class_labels of a class-conditional UNet2DModel); or a dict of keyword arguments
    passed to the UNet as is ({"encoder_hidden_states": ..., "class_labels": ...}).
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        # the UNet's parameter dtype; an analytic model without parameters (tests) keeps x's dtype
        dtype = next((p.dtype for p in self.unet.parameters()), x.dtype)
        kwargs = condition_kwargs(cond, x.shape[0], dtype)
        t = t.reshape(-1).expand(x.shape[0]).to(dtype)
        out = self.unet(x.to(dtype), t, **kwargs, return_dict=False)[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned variance (variance_type "learned_range"): keep the mean
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)


def condition_kwargs(cond, n: int, dtype: torch.dtype | None = None) -> dict:
    """The UNet keyword arguments for a diffguide condition (see DiffusersUNet).

    Float tensors (encoder_hidden_states) are cast to `dtype`, the UNet's, so a float64 embedding
    works with a float32 model.
    """
    if cond is None:
        return {}
    if isinstance(cond, dict):
        return {k: _cast(v, dtype) for k, v in cond.items()}
    cond = torch.as_tensor(cond)
    if cond.is_floating_point():
        return {"encoder_hidden_states": _cast(cond, dtype)}
    return {"class_labels": cond.reshape(-1).expand(n)}


def _cast(value, dtype):
    if dtype is not None and torch.is_tensor(value) and value.is_floating_point():
        return value.to(dtype)
    return value


class NullTextConditioned(nn.Module):
    """A diffusers-model denoiser fed a fixed null `encoder_hidden_states` [1, L, D] (or [N, L, D]).

    The guide of classifier-free guidance for a UNet2DConditionModel: whatever condition it is given,
    the text embedding is replaced by `null` (the empty-prompt embedding the model was trained with,
    or zeros); class labels in a dict condition are kept. null None: zeros shaped like the condition's
    encoder_hidden_states (the CLI's default).
    """

    def __init__(self, denoiser, null: torch.Tensor | None = None):
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("null", None if null is None else torch.as_tensor(null), persistent=False)

    def forward(self, x, sigma, cond=None):
        if self.null is None:
            hidden = cond["encoder_hidden_states"] if isinstance(cond, dict) else cond
            if not (torch.is_tensor(hidden) and hidden.is_floating_point()):
                raise ConfigError(
                    "classifier-free guidance of a UNet2DConditionModel with the default null condition "
                    "(zeros) needs encoder_hidden_states [N, L, D] as the condition"
                )
            null = torch.zeros_like(hidden[:1])
        else:
            null = self.null.to(x.device)
        null = null.expand(x.shape[0], *null.shape[1:])
        if isinstance(cond, dict):
            return self.denoiser(x, sigma, {**cond, "encoder_hidden_states": null})
        return self.denoiser(x, sigma, null)


def diffusers_denoiser(unet: nn.Module, scheduler_config: dict) -> ProcessPrecond:
    """Wrap a diffusers UNet and its scheduler config (betas and prediction_type, or flow matching) into
    a denoiser."""
    return ProcessPrecond(DiffusersUNet(unet), *scheduler_process(dict(scheduler_config)))


@dataclass
class DiffusersModel:
    """A loaded diffusers model folder: its denoiser, process, sample shape and scheduler settings."""

    denoiser: ProcessPrecond
    process: NoiseProcess  # DDPM, or FlowProcess for a FlowMatchEulerDiscreteScheduler
    shape: tuple[int, ...]
    target: str
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    scheduler_config: dict = field(default_factory=dict)
    unet_class: str = "UNet2DModel"


def _find_parts(path: Path) -> tuple[Path, Path]:
    """(unet folder, scheduler_config.json) of a pipeline folder (unet/, scheduler/) or a flat folder."""
    if not path.is_dir():
        raise CheckpointError(f"diffusers model folder {str(path)!r} does not exist or is not a folder")
    unet_dirs = [path / "unet", path]
    scheduler_files = [path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"]
    unet_dir = next((d for d in unet_dirs if (d / "config.json").is_file()), None)
    scheduler_file = next((f for f in scheduler_files if f.is_file()), None)
    if unet_dir is None or scheduler_file is None:
        looked = [str(d / "config.json") for d in unet_dirs] + [str(f) for f in scheduler_files]
        missing = "a UNet config.json" if unet_dir is None else "a scheduler_config.json"
        raise CheckpointError(
            f"{str(path)!r} is not a diffusers model folder: found no {missing}; looked for {', '.join(looked)}"
        )
    return unet_dir, scheduler_file


def load_diffusers(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusersModel:
    """Load a local diffusers UNet2DModel / UNet2DConditionModel folder with its scheduler config.

    Accepts a pipeline folder (model_index.json, unet/, scheduler/) or a flat folder holding both the
    UNet's config.json + weights and a scheduler_config.json. Never downloads anything.
    """
    diffusers = _require_diffusers()
    unet_dir, scheduler_file = _find_parts(Path(path))
    try:
        unet_config = json.loads((unet_dir / "config.json").read_text())
        scheduler_config = json.loads(scheduler_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"unreadable diffusers config in {str(path)!r}: {e}") from None
    classes = {"UNet2DModel": diffusers.UNet2DModel, "UNet2DConditionModel": diffusers.UNet2DConditionModel}
    name = unet_config.get("_class_name", "UNet2DModel")
    unet_cls = lookup("diffusers UNet class", name, classes)
    try:
        unet = unet_cls.from_pretrained(
            str(unet_dir), local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the {name} weights in {str(unet_dir)!r}: {e}") from None
    unet = unet.to(device).eval()
    denoiser = diffusers_denoiser(unet, scheduler_config)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return DiffusersModel(
        denoiser=denoiser,
        process=denoiser.process,
        shape=(int(unet.config.in_channels), *map(int, size)),
        target=denoiser.target,
        timestep_spacing=scheduler_config.get("timestep_spacing", "leading"),
        steps_offset=int(scheduler_config.get("steps_offset", 0) or 0),
        scheduler_config=scheduler_config,
        unet_class=name,
    )


def load_diffusers_denoiser(path: str | Path, device: str | torch.device = "cpu") -> ProcessPrecond:
    """The denoiser of a local diffusers model folder (see `load_diffusers`)."""
    return load_diffusers(path, device).denoiser


class EpsModelFromDenoiser(nn.Module):
    """A diffguide denoiser as a diffusers-style eps-prediction UNet for a discrete DDPM schedule.

    Called like a UNet2DModel, model(x_t, t, return_dict=False)[0], with x_t in the VP coordinates of
    `process` (x_t = x / sqrt(1 + sigma^2)) and a (possibly fractional) timestep t; it returns
    eps = (x - D(x, sigma(t))) / sigma(t). Lets diffusers' schedulers drive any diffguide denoiser.
    """

    def __init__(self, denoiser, process: DDPM):
        super().__init__()
        self.denoiser = denoiser
        self.process = process

    def forward(self, sample: torch.Tensor, timestep, cond=None, return_dict: bool = True):
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(sample.shape[0])
        sigma = self.process.sigma(t).to(sample.dtype)  # [N]
        s = append_dims(sigma, sample.ndim)
        x = sample * (1 + s**2).sqrt()
        eps = (x - self.denoiser(x, batch_sigma(sigma, x), cond)) / s
        return _UNetOutput(eps) if return_dict else (eps,)


@dataclass
class _UNetOutput:
    sample: torch.Tensor


@torch.no_grad()
def ipndm_scheduler_sample(denoiser, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """diffusers' IPNDMScheduler loop driving a diffguide denoiser through the grid `sigmas`.

    x: scale-free, at sigmas[0]; returns the scale-free result at sigmas[-1]. IPNDMScheduler lives on
    v-diffusion's cosine-angle schedule (VP coordinates, alpha = cos, sigma_vp = sin, a v-prediction
    model) and takes its grid from `trained_betas`, which are the sigma_vp of each grid point (last
    included). The v-model maps a timestep back to its grid point by position, so no float32
    timestep rounding enters. For parity tests and the peer benchmarks.
    """
    diffusers = _require_diffusers()
    sigmas = sigmas.to(torch.float64)
    sigma_vp = sigmas / (1 + sigmas**2).sqrt()
    scheduler = diffusers.IPNDMScheduler(trained_betas=sigma_vp.tolist())
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.betas, scheduler.alphas = sigma_vp.clone(), (1 - sigma_vp**2).sqrt()  # float64 tables

    def v_model(sample, t):
        sigma = sigmas[int((scheduler.timesteps - t).abs().argmin())]
        alpha = 1 / (1 + sigma**2).sqrt()
        x_free = sample / alpha
        denoised = denoiser(x_free, batch_sigma(sigma, x_free))
        return alpha * (x_free - denoised) / sigma - sigma * alpha * denoised  # v = alpha eps - sigma_vp x0

    sample = x / (1 + sigmas[0] ** 2).sqrt()
    for t in scheduler.timesteps:
        sample = scheduler.step(v_model(sample, t), t, sample).prev_sample
    return sample * (1 + sigmas[-1] ** 2).sqrt()


__all__ = [
    "DiffusersModel",
    "DiffusersUNet",
    "EpsModelFromDenoiser",
    "FLOW_SCHEDULER",
    "FLOW_SIGMA_RANGE_KEY",
    "NullTextConditioned",
    "ipndm_scheduler_sample",
    "PREDICTION_TARGETS",
    "diffusers_denoiser",
    "flow_process_from_scheduler_config",
    "load_diffusers",
    "load_diffusers_denoiser",
    "process_from_scheduler_config",
    "prediction_target",
    "scheduler_process",
]
