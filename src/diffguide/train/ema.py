"""The exponential moving average of the weights that sampling uses by default."""

from __future__ import annotations

import torch


class EMA:
    """Exponential moving average of a module's floating-point state (Polyak averaging).

    The decay at step k is min(decay, (1 + k) / (10 + k)): a warm-up that lets the average forget
    the random initial weights quickly. Integer state (counters) is copied, not averaged."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - d)
            else:
                self.shadow[k].copy_(v)
