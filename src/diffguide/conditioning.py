"""Conditions and their null version (the 'no condition' input that label dropout trains).

A condition is None, a [N] long tensor of class labels (null label = num_classes), or, for
multi-attribute data, a dict of tensors (see the images feature). `null_condition` is what
classifier-free guidance feeds the guide.
"""

from __future__ import annotations

import torch


def null_condition(cond, num_classes: int):
    """The null condition shaped like `cond` (None stays None)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return null_attributes(cond)
    cond = torch.as_tensor(cond)
    return torch.full_like(cond.long(), num_classes)


def null_attributes(cond: dict) -> dict:
    """The null condition shaped like `cond`: every part set to -1."""
    return {k: torch.full_like(torch.as_tensor(v), -1) for k, v in cond.items()}
