"""A run's record of a dataset registered from Python, so the run loads in a process that never ran
the registration (the CLI, the dashboard, a new notebook).

Training on a dataset that is not one of diffguide's own writes RUN/dataset.safetensors (no pickle):
- a dataset with an exact mixture: the mixture's weights, means, covariances and classes (exact
  metrics stay available);
- a point cloud (`points` attribute): its points and labels, as trained on;
- any other low-dimensional dataset: `data.size` points (at most RECORD_POINTS) drawn from it with
  the generator seeded by `data.seed`;
- an image dataset: its shape and classes only (enough to rebuild and sample the model; anything
  that needs its images says to register it again).
The header's JSON metadata keeps the shape, the number of classes and their names, so the rebuilt
network has the same layers whatever labels the kept points happen to hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from diffguide.data.files import resolve_data_path
from diffguide.data.points import MixtureDataset, PointCloudDataset
from diffguide.data.registry import DATASETS, OPTIONS, DataConfig, Dataset, Option, make_dataset
from diffguide.errors import DataError
from diffguide.io import atomic_write_bytes
from diffguide.mixtures import GaussianMixture

RECORD = "dataset.safetensors"
RECORD_POINTS = 100_000
# every name registered by diffguide itself (this module is imported after every dataset module)
BUILTIN_DATASETS = frozenset(DATASETS)
_FROM_RECORDS: set[str] = set()  # names registered here from a run's record, not by the user's code


def is_builtin(name: str) -> bool:
    return name in BUILTIN_DATASETS


def _record_tensors(cfg: DataConfig, dataset: Dataset) -> tuple[str, dict[str, torch.Tensor]]:
    mixture = getattr(dataset, "mixture", None)
    if mixture is not None:
        tensors = {k: getattr(mixture, k).detach().cpu().contiguous() for k in ("weights", "means", "covs")}
        return "mixture", {**tensors, "classes": mixture.classes.detach().cpu().long().contiguous()}
    if dataset.kind != "points":
        return "shape", {}
    points = getattr(dataset, "points", None)
    if points is not None:
        labels = getattr(dataset, "labels", None)
    else:
        n = min(cfg.size, RECORD_POINTS)
        points, labels = dataset.sample_batch(n, torch.Generator().manual_seed(cfg.seed))
    tensors = {"points": torch.as_tensor(points).detach().cpu().float().contiguous()}
    if labels is not None:
        tensors["labels"] = torch.as_tensor(labels).detach().cpu().long().contiguous()
    return "points", tensors


def keep_dataset_record(cfg: DataConfig, dataset: Dataset, run_dir: Path) -> None:
    """Write RUN/dataset.safetensors for a dataset registered from Python (once; built-in sets need none)."""
    path = Path(run_dir) / RECORD
    if is_builtin(cfg.name) or path.is_file():
        return
    what, tensors = _record_tensors(cfg, dataset)
    meta = {
        "name": cfg.name,
        "record": what,
        "kind": dataset.kind,
        "shape": list(dataset.shape),
        "num_classes": int(dataset.num_classes),
        "class_names": [str(c) for c in (dataset.class_names or [])],
    }
    atomic_write_bytes(path, save(tensors, metadata={"dataset": json.dumps(meta)}))


def read_dataset_record(cfg: DataConfig, run_dir: Path) -> Dataset:
    """The dataset a run's record describes, with the recorded shape, classes and class names."""
    path = Path(run_dir) / RECORD
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["dataset"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise DataError(
            f"{str(path)!r} is not a readable dataset record ({e}); register dataset {cfg.name!r} from "
            "Python before loading the run"
        ) from None
    if meta["record"] == "mixture":
        mixture = GaussianMixture(
            tensors["weights"],
            tensors["means"],
            tensors["covs"],
            tensors["classes"],
            meta["class_names"] or None,
        )
        dataset = MixtureDataset(mixture, cfg.conditional)
    elif meta["record"] == "points":
        labels = tensors.get("labels") if cfg.conditional else None
        dataset = PointCloudDataset(tensors["points"].numpy(), None if labels is None else labels.numpy())
    else:
        dataset = RecordedShape(cfg.name, path)
    dataset.kind = meta["kind"]
    dataset.shape = tuple(meta["shape"])
    dataset.num_classes = meta["num_classes"]
    dataset.class_names = list(meta["class_names"])
    return dataset


class RecordedShape(Dataset):
    """An image dataset known only by its shape and classes: the model rebuilds and samples; data is refused."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path

    def _refuse(self, *args, **kwargs):
        raise DataError(
            f"dataset {self.name!r} was registered from Python when the run was trained and "
            f"{str(self.path)!r} keeps only its shape and classes; register {self.name!r} from Python "
            "to use its images"
        )

    sample_batch = heldout = heldout_batch = _refuse


def _record_factory(run_dir: Path):
    return lambda cfg: read_dataset_record(cfg, run_dir)


def ensure_dataset_known(cfg: DataConfig, run_dir: Path) -> None:
    """Make a run's dataset name loadable here: registered by the user's code, or from the run's record.

    A name neither registered nor recorded is a DataError naming the dataset and the way out."""
    if cfg.name in DATASETS and cfg.name not in _FROM_RECORDS:
        return
    run_dir = Path(run_dir)
    if not (run_dir / RECORD).is_file():
        raise DataError(
            f"run {str(run_dir)!r} was trained on dataset {cfg.name!r}, which is not registered here (a "
            f"dataset registered from Python?) and the run keeps no {RECORD}; load the run from Python "
            f"after registering {cfg.name!r} (diffguide.data.registry.register), or train it again"
        )
    # the saved options are the ones the user's registration accepted: accept them again
    DATASETS[cfg.name] = _record_factory(run_dir)
    OPTIONS[cfg.name] = {
        k: Option(int if isinstance(v, int) and not isinstance(v, bool) else float)
        for k, v in cfg.options.items()
    }
    _FROM_RECORDS.add(cfg.name)


def dataset_for_run(cfg: DataConfig, run_dir: Path) -> Dataset:
    """The dataset a run trained on: the registered one, or the run's own record (never another run's)."""
    ensure_dataset_known(cfg, run_dir)
    if cfg.name in _FROM_RECORDS:
        return read_dataset_record(cfg, run_dir)
    return make_dataset(resolve_data_path(cfg, run_dir))
