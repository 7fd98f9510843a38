"""Which device a run trains on, and whether bf16 is worth it there."""

from __future__ import annotations

import torch

BF16_ON_SLOW_CPU = (
    "train.precision=bf16 on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): bf16 is emulated "
    "there and was measured 8 to 20 times slower than fp32 (benchmarks/results/training.md); "
    "use train.precision=fp32 on this machine"
)


def resolve_device(name: str) -> torch.device:
    """train.device as a torch device: "auto" is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); True if torch cannot tell
    (the checks are private torch functions, so a later torch may not have them)."""
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    checks = [getattr(torch.cpu, name) for name in names if callable(getattr(torch.cpu, name, None))]
    return not checks or any(check() for check in checks)
