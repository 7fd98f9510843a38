"""Which device a run trains on, and whether bf16 is worth it there."""

from __future__ import annotations

import torch

from diffguide.errors import ConfigError

BF16_ON_SLOW_CPU = (
    "train.precision=bf16 on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): bf16 is emulated "
    "there and was measured 8 to 20 times slower than fp32 (benchmarks/results/training.md); "
    "use train.precision=fp32 on this machine"
)


def resolve_device(name: str, flag: str | None = None) -> torch.device:
    """train.device (or a command's --device: `flag`) as a torch device: "auto" is the GPU when there is
    one, else the CPU.

    A device this machine does not have is a ConfigError naming it, the devices there are and the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    given = f"train.device={name!r}" if flag is None else f"{flag} {name!r}"
    fix = "--set train.device=" if flag is None else f"{flag} "
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(
            f"{given} but {why} (torch {torch.__version__}); available: "
            f"{', '.join(available_devices())}; use {fix}auto (or cpu)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"{given} but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
            f"available: {', '.join(available_devices())}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"{given} but MPS (Apple GPUs) is not available here; available: "
            f"{', '.join(available_devices())}; use {fix}auto (or cpu)"
        )
    return device


def available_devices() -> list[str]:
    """The train.device values this machine can use: cpu, each CUDA GPU, mps."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); True if torch cannot tell
    (the checks are private torch functions, so a later torch may not have them)."""
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    checks = [getattr(torch.cpu, name) for name in names if callable(getattr(torch.cpu, name, None))]
    return not checks or any(check() for check in checks)
