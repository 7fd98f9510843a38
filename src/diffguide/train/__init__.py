"""Training: the loop (loop.py) and its parts: one step, the state, batches, checkpoints, logs."""

from diffguide.train.loop import train

__all__ = ["train"]
