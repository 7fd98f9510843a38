"""A .npz cache of decoded image sets, so a second run does not decode the sources again.

The cache folder is $DIFFGUIDE_CACHE, else $XDG_CACHE_HOME/diffguide, else ~/.cache/diffguide. Each
entry is keyed by the source (its name, files, their sizes and modification times, and a format
version), so editing or replacing a source file makes a fresh entry. Only plain arrays are stored
(np.load with allow_pickle=False): nothing in the cache can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


def cache_dir() -> Path:
    if os.environ.get("DIFFGUIDE_CACHE"):
        return Path(os.environ["DIFFGUIDE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffguide"


def source_key(name: str, files: list[Path] = (), **extra) -> str:
    """A short hash of a source: its name, each file's path, size and mtime, and extra settings."""
    parts = {"name": name, "version": FORMAT_VERSION, "extra": extra, "files": []}
    for f in files:
        st = Path(f).stat()
        parts["files"].append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored under `key`, building and saving them first if absent or unreadable."""
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            pass  # a truncated or corrupt entry is rebuilt below
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs speed
    return arrays
