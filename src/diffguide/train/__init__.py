"""Training: the loop, checkpoints and logs."""

from diffguide.train.loop import train

__all__ = ["train"]
