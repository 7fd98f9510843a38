"""Datasets. Every dataset gives batches through `sample_batch(n, generator) -> (x0, labels)`."""

from __future__ import annotations

from .registry import DATASETS, Dataset, make_dataset

__all__ = ["DATASETS", "Dataset", "make_dataset"]
