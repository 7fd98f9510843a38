"""Multi-attribute conditions (CryptoPunks): a categorical type plus a multi-hot accessory vector.

A condition is a dict {"type": [N] long, "accessories": [N, A] float}. The value -1 means "null"
(no condition on that part): type -1, or an accessory row of all -1 (an all-zero row is a real
condition, "no accessories"). An accessory row names every accessory: 1 = wanted, 0 = absent, so
asking for earring + blonde bob asks for a punk with those two and no other accessory. Each part is
dropped to null independently during training, so a model can be asked for a type alone,
accessories alone, both, or neither (the CFG guide).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from diffguide.errors import unknown

PARTS = ("type", "accessories")


def drop_attributes(labels: dict, p: float, generator: torch.Generator) -> dict:
    """Label dropout for attribute dicts: each part becomes null with probability p, per sample, independently."""
    if p <= 0:
        return labels
    out = {}
    for key in sorted(labels):  # fixed order: the generator's draws do not depend on dict order
        v = labels[key]
        drop = torch.rand(v.shape[0], generator=generator) < p
        mask = drop.reshape((-1,) + (1,) * (v.ndim - 1))
        out[key] = torch.where(mask, torch.full_like(v, -1), v)
    return out


def display_name(raw: str) -> str:
    """'blondeBob' -> 'blonde bob', '3DGlasses' -> '3d glasses' (names as users type them)."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z0-9])|(?<=[A-Z])(?=[A-Z][a-z])", " ", raw)
    return spaced.lower()


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower())


@dataclass
class AttributeSpec:
    """Names of the types and accessories, and the label matrix used to check combinations."""

    types: list[str]
    accessories: list[str]
    type_labels: np.ndarray | None = None  # [N] int, the data's types (for co-occurrence checks)
    accessory_labels: np.ndarray | None = None  # [N, A] 0/1

    def type_index(self, name: str) -> int:
        table = {_norm(t): i for i, t in enumerate(self.types)}
        if _norm(name) not in table:
            raise unknown("type", name, self.types)
        return table[_norm(name)]

    def accessory_index(self, name: str) -> int:
        table = {_norm(a): i for i, a in enumerate(self.accessories)}
        if _norm(name) not in table:
            raise unknown("accessory", name, self.accessories)
        return table[_norm(name)]

    def condition(self, n: int, type_name: str | None = None, accessories: list[str] | None = None) -> dict:
        """The condition dict for n samples; an unnamed part is null (-1), unnamed accessories of a named
        set are absent (0). Warns when no training image has exactly this combination."""
        kind = -1 if type_name is None else self.type_index(type_name)
        acc = None
        if accessories is not None:
            idx = [self.accessory_index(a) for a in accessories]
            acc = np.zeros(len(self.accessories), dtype=np.float32)
            acc[idx] = 1.0
        self.warn_if_unseen(kind, acc)
        return {
            "type": torch.full((n,), kind, dtype=torch.long),
            "accessories": torch.as_tensor(acc if acc is not None else -np.ones(len(self.accessories)))
            .float()
            .expand(n, -1)
            .clone(),
        }

    def count_matches(self, kind: int, acc: np.ndarray | None, exact: bool = True) -> int:
        """How many training examples have this type (if given) and these accessories (if given).

        exact: the accessory set must be exactly `acc` (a condition names every accessory it wants;
        unnamed ones are asked to be absent); exact=False: at least these accessories, maybe more.
        """
        if self.type_labels is None:
            return -1
        keep = np.ones(len(self.type_labels), dtype=bool)
        if kind >= 0:
            keep &= self.type_labels == kind
        if acc is not None:
            have, want = self.accessory_labels > 0, np.asarray(acc) > 0
            keep &= (have == want).all(axis=1) if exact else have[:, want].all(axis=1)
        return int(keep.sum())

    def warn_if_unseen(self, kind: int, acc: np.ndarray | None) -> None:
        if self.count_matches(kind, acc) != 0:
            return
        what = "" if kind < 0 else f"type {self.types[kind]!r}"
        hint = absent = ""
        if acc is not None:
            absent = "unnamed accessories are requested as absent, and "
            names = [repr(self.accessories[i]) for i in np.flatnonzero(acc)]
            exactly = f"exactly the accessories {', '.join(names)}" if names else "no accessories"
            what = f"{what} with {exactly}" if what else exactly
            if names:
                more = self.count_matches(kind, acc, exact=False)
                hint = (
                    f" ({more} have them plus other accessories: name those too to ask for such a punk)"
                    if more
                    else " (none has them even with other accessories)"
                )
        warnings.warn(
            f"no training image has {what}{hint}; {absent}the model never saw this combination "
            "and may ignore part of it",
            stacklevel=3,
        )

    def describe(self, kind: int, acc) -> str:
        parts = [] if kind < 0 else [self.types[kind]]
        if acc is not None and (np.asarray(acc) >= 0).all():
            parts += [self.accessories[i] for i in np.flatnonzero(np.asarray(acc) > 0)]
        return ", ".join(parts) or "any"
