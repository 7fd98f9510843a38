"""Datasets. Every dataset gives batches through `sample_batch(n, generator) -> (x0, labels)`.

Importing this package registers every dataset: the 2D sets (`points`) and the image sets (`images`) and
your own points or mixture from a file (`files`). A run trained on a dataset registered from Python
keeps a record of it (`record`) and loads without the registration.
"""

from __future__ import annotations

# files, images, points register their datasets; record, imported last, notes which names are ours
from diffguide.data import files, images, points, record  # noqa: F401
from diffguide.data.registry import DATASETS, Dataset, make_dataset

__all__ = ["DATASETS", "Dataset", "make_dataset"]
