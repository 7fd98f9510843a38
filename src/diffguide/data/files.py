"""Your own low-dimensional data from files: a point cloud (`points`) or an exact mixture (`mixture`).

`data.name = "points"`, `data.path` = a `.npy` array [N, D], a `.npz` with `x` (and optionally
`labels`), or a `.csv` of numbers (an optional header; a column named `label` or `class`, or the column
`data.options.label_column`, holds integer class labels). Labels make the set class-conditional
when `data.conditional = true`.

`data.name = "mixture"`, `data.path` = a `.json` or `.safetensors` file with `weights` [K] (summing to
1), `means` [K, D], `covs` [K, D, D] (symmetric positive definite) and optionally `classes` [K]
(integer class of each component) and `class_names` (JSON only). The mixture is the exact data
density, so every exact metric (precision, coverage, log p) is available for runs trained on it.

Every rule a file breaks is a DataError naming the file, the row or component, and the rule.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from diffguide.data.points import MixtureDataset, PointCloudDataset
from diffguide.data.registry import DataConfig, Option, register
from diffguide.errors import DataError
from diffguide.io import atomic_write_bytes
from diffguide.mixtures import GaussianMixture

POINT_SUFFIXES = (".npy", ".npz", ".csv")
MIXTURE_SUFFIXES = (".json", ".safetensors")
LABEL_HEADERS = ("label", "class")


def _need_file(path: str, suffixes: tuple[str, ...], dataset: str) -> Path:
    if not path:
        raise DataError(
            f"dataset {dataset!r} reads its data from a file: set data.path to a "
            f"{' / '.join(suffixes)} file, e.g. --set data.path=my{suffixes[0]}"
        )
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise DataError(f"data.path {str(p)!r}: dataset {dataset!r} reads {' / '.join(suffixes)} files")
    if not p.is_file():
        raise DataError(f"data.path {str(p)!r} does not exist (dataset {dataset!r})")
    return p


def _read_csv(p: Path, label_column: int | None):
    lines = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{str(p)!r} is empty: expected rows of numbers, one point per row")
    first = [c.strip() for c in lines[0].split(",")]
    header = None
    try:
        [float(c) for c in first]
    except ValueError:
        header, lines = [c.lower() for c in first], lines[1:]
    if header is not None and label_column is None:
        label_column = next((header.index(h) for h in LABEL_HEADERS if h in header), None)
    rows = []
    for i, line in enumerate(lines, start=2 if header else 1):
        try:
            rows.append([float(c) for c in line.split(",")])
        except ValueError:
            raise DataError(f"{str(p)!r} line {i}: {line[:60]!r} is not a row of numbers") from None
        if len(rows[-1]) != len(rows[0]):
            raise DataError(f"{str(p)!r} line {i}: {len(rows[-1])} columns, the first row has {len(rows[0])}")
    table = np.asarray(rows, dtype=np.float64)
    if label_column is None:
        return table, None
    if not -table.shape[1] <= label_column < table.shape[1]:
        raise DataError(f"{str(p)!r}: label column {label_column} does not exist ({table.shape[1]} columns)")
    labels = table[:, label_column]
    return np.delete(table, label_column % table.shape[1], axis=1), labels


def _read_array_file(p: Path, label_column: int | None):
    if p.suffix.lower() == ".csv":
        return _read_csv(p, label_column)
    try:
        data = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(
            f"{str(p)!r} is not a readable {p.suffix} file without pickled objects ({e})"
        ) from None
    if p.suffix.lower() == ".npy":
        return np.asarray(data, dtype=np.float64), None
    keys = list(data.keys())
    if "x" not in keys:
        raise DataError(f"{str(p)!r} has arrays {keys}; expected 'x' (points [N, D]) and optionally 'labels'")
    labels = data["labels"] if "labels" in keys else None
    return np.asarray(data["x"], dtype=np.float64), labels


def _check_labels(p: Path, labels, n: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(labels) != n:
        raise DataError(f"{str(p)!r}: {len(labels)} labels for {n} points")
    bad = np.flatnonzero(~np.isfinite(labels) | (labels < 0) | (labels != np.round(labels)))
    if len(bad):
        raise DataError(
            f"{str(p)!r} row {bad[0]}: label {labels[bad[0]]!r} is not an integer >= 0 (class labels are 0, 1, ...)"
        )
    return labels.astype(np.int64)


def read_points(path: str | Path, label_column: int | None = None):
    """(points [N, D] float64, labels [N] int64 or None) from a .npy, .npz or .csv file, checked."""
    p = _need_file(str(path), POINT_SUFFIXES, "points")
    points, labels = _read_array_file(p, label_column)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 1:
        raise DataError(f"{str(p)!r}: points must be an array [N, D] with N >= 2, got shape {points.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if len(bad_rows):
        raise DataError(
            f"{str(p)!r} row {bad_rows[0]}: {points[bad_rows[0]].tolist()} is not finite (NaN or inf); "
            "remove or fix that row"
        )
    return points, None if labels is None else _check_labels(p, labels, len(points))


def _mixture_arrays(p: Path) -> dict:
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{str(p)!r} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise DataError(f"{str(p)!r} must hold a JSON object with weights, means and covs")
        return data
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(p)))
    except (SafetensorError, OSError) as e:
        raise DataError(f"{str(p)!r} is not a readable safetensors file ({e})") from None


def _as_array(p: Path, data: dict, key: str, ndim: int) -> np.ndarray:
    if key not in data:
        raise DataError(
            f"{str(p)!r} has no {key!r}; a mixture file holds weights [K], means [K, D], covs [K, D, D]"
        )
    try:
        a = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{str(p)!r}: {key} must be an array of numbers") from None
    if a.ndim != ndim:
        raise DataError(f"{str(p)!r}: {key} must have {ndim} dimensions, got shape {a.shape}")
    return a


def read_mixture(path: str | Path) -> GaussianMixture:
    """The exact GaussianMixture a .json or .safetensors file describes, every rule checked."""
    p = _need_file(str(path), MIXTURE_SUFFIXES, "mixture")
    data = _mixture_arrays(p)
    w, mu, cov = (
        _as_array(p, data, "weights", 1),
        _as_array(p, data, "means", 2),
        _as_array(p, data, "covs", 3),
    )
    k, d = mu.shape
    if len(w) != k or cov.shape != (k, d, d):
        raise DataError(
            f"{str(p)!r}: shapes disagree: weights {w.shape}, means {mu.shape}, covs {cov.shape} "
            f"(expected [K], [K, D], [K, D, D])"
        )
    for name, a in (("weights", w), ("means", mu), ("covs", cov)):
        if not np.isfinite(a).all():
            raise DataError(
                f"{str(p)!r}: {name} holds a NaN or inf (component {np.argwhere(~np.isfinite(a))[0][0]})"
            )
    if (w < 0).any():
        raise DataError(
            f"{str(p)!r}: weight of component {int(np.argmax(w < 0))} is negative ({w[w < 0][0]})"
        )
    if not math.isclose(float(w.sum()), 1.0, abs_tol=1e-6):
        raise DataError(f"{str(p)!r}: weights sum to {float(w.sum())!r}; they must sum to 1")
    for i in range(k):
        c = cov[i]
        if not np.allclose(c, c.T, atol=1e-10) or np.linalg.eigvalsh((c + c.T) / 2).min() <= 0:
            raise DataError(f"{str(p)!r}: covariance of component {i} is not symmetric positive definite")
    classes = data.get("classes")
    if classes is not None:
        classes = _check_labels(p, classes, k)
    names = data.get("class_names")
    return GaussianMixture(w, mu, cov, classes=classes, class_names=names)


def _points_dataset(cfg: DataConfig):
    points, labels = read_points(cfg.path, cfg.options.get("label_column"))
    if cfg.conditional and labels is None:
        raise DataError(
            f"data.conditional is true but {cfg.path!r} has no labels: add a 'label' column (csv), "
            "'labels' (npz) or set data.options.label_column, or set data.conditional=false"
        )
    return PointCloudDataset(points, labels if cfg.conditional else None)


def _mixture_dataset(cfg: DataConfig):
    return MixtureDataset(read_mixture(cfg.path), cfg.conditional)


register("points", {"label_column": Option(int, low=-1000, high=1000)})(_points_dataset)
register("mixture")(_mixture_dataset)


FILE_SETS = ("points", "mixture")
KEPT = "data"  # the run's copy of its data file: runs stay usable when the file moves


def keep_data_file(cfg: DataConfig, run_dir: Path) -> None:
    """Copy a file-based dataset's file into run_dir/data/ (once), so the run no longer needs the original."""
    if cfg.name not in FILE_SETS or not cfg.path:
        return
    source = Path(cfg.path).expanduser()
    kept = Path(run_dir) / KEPT / source.name
    if source.is_file() and not kept.is_file():
        atomic_write_bytes(kept, source.read_bytes())


def resolve_data_path(cfg: DataConfig, run_dir: Path) -> DataConfig:
    """cfg with data.path pointing at the run's kept copy when the original file is gone."""
    if cfg.name not in FILE_SETS or not cfg.path or Path(cfg.path).expanduser().is_file():
        return cfg
    kept = Path(run_dir) / KEPT / Path(cfg.path).name
    if kept.is_file():
        return dataclasses.replace(cfg, path=str(kept))
    raise DataError(
        f"run {str(run_dir)!r} was trained on {cfg.path!r}, which no longer exists, and keeps no copy "
        f"in {str(kept.parent)!r}; put the file back at that path or copy it to {str(kept)!r}"
    )
