"""Training: the loop, checkpoints and logs."""

from .loop import train

__all__ = ["train"]
