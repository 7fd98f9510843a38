"""Distributed training on PyTorch's own engine: torchrun sets the environment, we read it.

Launch with `torchrun --nproc_per_node N -m diffguide train ...`. Every rank draws the same global
batch from the same generator and trains on its own slice of it, so the averaged gradient equals
the single-process gradient of that global batch: a run gives the same result (up to floating-point
reduction order) on 1 or N processes, and resume works the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a no-op when alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # NCCL for CUDA tensors; gloo also on CUDA runs for the small CPU tensors of any_rank/all_gather_ints
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local)


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """On CUDA each rank takes the GPU of its local rank."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def shard(x, info: DistInfo):
    """This rank's contiguous slice of a global batch (a tensor, a dict of tensors or None)."""
    if x is None or not info.enabled:
        return x
    if isinstance(x, dict):
        return {k: shard(v, info) for k, v in x.items()}
    n = x.shape[0]
    if n % info.world_size:
        raise ValueError(f"global batch {n} is not divisible by {info.world_size} processes")
    per = n // info.world_size
    return x[info.rank * per : (info.rank + 1) * per]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a scalar over ranks (for logging the global loss)."""
    if not info.enabled:
        return value
    v = value.detach().clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (so all ranks stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_ints(values: tuple[int, ...], info: DistInfo) -> list[tuple[int, ...]]:
    """Every rank's `values` (the same length on each), in rank order."""
    if not info.enabled:
        return [tuple(values)]
    mine = torch.tensor(values, dtype=torch.int64)
    everyone = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(everyone, mine)
    return [tuple(int(v) for v in t) for t in everyone]


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True in a plain process and in rank 0 of a torchrun job (read from the environment)."""
    return int(os.environ.get("RANK", "0")) == 0
