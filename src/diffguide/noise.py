"""Per-sample noise: sample i's noise depends only on (seed, i), never on the batch it is drawn in.

Like EDM's StackedRandomGenerator, each sample owns a torch.Generator. To keep the per-step cost low
each generator draws CHUNK steps of noise at once; the chunk size is fixed, so sample i sees the same
stream at batch size 1 or 1000.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CHUNK = 16


def sample_seeds(seed: int, n: int, start: int = 0) -> list[int]:
    """The per-sample seeds of samples start .. start+n-1 for a run seed (a fixed 64-bit mix)."""
    return [(int(seed) * 1_000_003 + i) % (2**63 - 1) for i in range(start, start + n)]


class PerSampleNoise:
    """A stack of per-sample generators; `randn_like(x)` returns noise of x's shape, row i from stream i."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in self.seeds]
        self._buffer: torch.Tensor | None = None  # [N, CHUNK, *shape]
        self._shape: tuple[int, ...] | None = None
        self._pos = CHUNK

    @classmethod
    def from_seed(cls, seed: int, n: int, start: int = 0, device="cpu") -> PerSampleNoise:
        return cls(sample_seeds(seed, n, start), device)

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
        """Noise of shape [N, *shape]: the next draw of each sample's stream."""
        shape = tuple(int(s) for s in shape)
        if shape != self._shape or self._pos >= CHUNK:
            if shape != self._shape:
                self._shape = shape
            self._buffer = torch.stack([torch.randn((CHUNK, *shape), generator=g) for g in self.generators])
            self._pos = 0
        out = self._buffer[:, self._pos]
        self._pos += 1
        return out.to(device=self.device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.seeds):
            raise ValueError(f"batch of {x.shape[0]} samples but {len(self.seeds)} per-sample generators")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


def noise_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise shaped like x from a PerSampleNoise, a torch.Generator or the global RNG."""
    if isinstance(generator, PerSampleNoise):
        return generator.randn_like(x)
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
