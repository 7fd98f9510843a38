"""Training batches: the global batch, its label dropout and its noise, drawn from one generator on the
CPU, then this rank's slice of it and the slice's micro-batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from diffguide.data import Dataset
from diffguide.data.attributes import drop_attributes
from diffguide.losses import DenoisingLoss
from diffguide.train import distributed

Condition = torch.Tensor | dict[str, torch.Tensor] | None  # class labels [N], attribute dict, or none


@dataclass
class Batch:
    """Clean examples, their (dropped-out) condition and the noise that the loss adds, on the CPU."""

    x0: torch.Tensor  # [N, ...]
    labels: Condition
    sigma: torch.Tensor  # [N] float64
    eps: torch.Tensor  # like x0

    def micro_batches(self, count: int) -> Iterator[Batch]:
        """`count` consecutive equal slices (gradient accumulation); N must be divisible by count."""
        if self.x0.shape[0] % count:
            raise ValueError(f"a batch of {self.x0.shape[0]} does not split into {count} equal micro-batches")
        size = self.x0.shape[0] // count
        for k in range(count):
            part = slice(k * size, (k + 1) * size)
            yield Batch(self.x0[part], select(self.labels, part), self.sigma[part], self.eps[part])


def draw_batch(
    dataset: Dataset,
    loss_fn: DenoisingLoss,
    generator: torch.Generator,
    batch_size: int,
    *,
    num_classes: int = 0,
    p_uncond: float = 0.0,
    info: distributed.DistInfo | None = None,
) -> Batch:
    """The global batch and its noise, drawn identically on every rank, then this rank's slice.

    num_classes: 0 for an unconditional model (labels are dropped entirely), else the null class that
    label dropout (probability p_uncond per sample) writes."""
    x0, labels = dataset.sample_batch(batch_size, generator)
    labels = drop_condition(labels, num_classes, p_uncond, generator) if num_classes else None
    sigma, eps = loss_fn.draw_noise(x0, generator)
    info = distributed.DistInfo() if info is None else info
    return Batch(*(distributed.shard(v, info) for v in (x0, labels, sigma, eps)))


def drop_labels(labels: torch.Tensor | None, num_classes: int, p: float, generator: torch.Generator):
    """Replace each label by the null class `num_classes` with probability p, per sample."""
    if labels is None or p <= 0:
        return labels
    drop = torch.rand(labels.shape[0], generator=generator) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def drop_condition(labels: Condition, num_classes: int, p: float, generator: torch.Generator) -> Condition:
    """Label dropout for any condition: class labels here, attribute dicts via data.attributes."""
    if isinstance(labels, dict):
        return drop_attributes(labels, p, generator)
    return drop_labels(labels, num_classes, p, generator)


def select(labels: Condition, part: slice) -> Condition:
    """A slice of a condition (a tensor, each tensor of a dict, or None)."""
    if labels is None:
        return None
    if isinstance(labels, dict):
        return {k: v[part] for k, v in labels.items()}
    return labels[part]


def to_device(labels: Condition, device: torch.device) -> Condition:
    """A condition moved to `device` (a tensor, each tensor of a dict, or None)."""
    if labels is None:
        return None
    if isinstance(labels, dict):
        return {k: v.to(device) for k, v in labels.items()}
    return labels.to(device)
