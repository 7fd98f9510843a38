"""Datasets. Every dataset gives batches through `sample_batch(n, generator) -> (x0, labels)`.

Importing this package registers every dataset: the 2D sets (`points`) and the image sets (`images`) and
your own points or mixture from a file (`files`).
"""

from __future__ import annotations

from diffguide.data import files, images, points  # noqa: F401  (each registers its datasets)
from diffguide.data.registry import DATASETS, Dataset, make_dataset

__all__ = ["DATASETS", "Dataset", "make_dataset"]
