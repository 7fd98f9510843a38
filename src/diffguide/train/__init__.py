"""Training: the loop (loop.py) and its parts: one step, the state, batches, checkpoints, logs."""

from diffguide.train.loop import train
from diffguide.train.signals import TrainingInterrupted

__all__ = ["TrainingInterrupted", "train"]
