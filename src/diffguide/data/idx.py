"""Reader for the IDX files of MNIST and Fashion-MNIST (LeCun et al.), raw or gzip-compressed.

Format: 2 zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then each
dimension as a big-endian uint32, then the data in row-major order.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from diffguide.errors import DataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (.gz read transparently); malformed files raise DataError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {str(path)!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r} is truncated: its header names {ndim} dimensions")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_TYPES[raw[2]])
    count = math.prod(dims)  # Python ints: a forged header cannot overflow it
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"{str(path)!r} is truncated or padded: header says {dims} ({count * dtype.itemsize} bytes of "
            f"data) but the file holds {len(raw) - header}"
        )
    # numpy refuses a shape whose nonzero sides multiply past its limit even when another side is
    # 0 (an empty array): such a header describes no array we could return
    if math.prod(d for d in dims if d) * dtype.itemsize > np.iinfo(np.intp).max:
        raise DataError(f"{str(path)!r} has an impossible header: dimensions {dims} are too large")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write an array as an IDX file (gzip when compress or the name ends in .gz); used by tests."""
    path = Path(path)
    array = np.asarray(array)
    code = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.dtype(IDX_TYPES[code])).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def find_idx(folder: Path, stem: str) -> Path | None:
    """folder/stem or folder/stem.gz (also the 'stem.idx3-ubyte' spelling some mirrors use)."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def mnist_files(folder: str | Path, dataset: str = "mnist") -> dict[str, tuple[Path, Path]]:
    """The four MNIST-layout files in `folder` by split, or a DataError listing what to put where."""
    if not str(folder):
        raise DataError(
            f"dataset {dataset!r} reads local IDX files: set data.path to the folder holding "
            f"{', '.join(f + '[.gz]' for pair in MNIST_FILES.values() for f in pair)} "
            f"(e.g. --set data.path=data/{dataset})"
        )
    folder = Path(folder)
    found, missing = {}, []
    for split, stems in MNIST_FILES.items():
        paths = [find_idx(folder, s) for s in stems]
        missing += [s + "[.gz]" for s, p in zip(stems, paths) if p is None]
        found[split] = tuple(paths)
    if missing:
        raise DataError(
            f"dataset {dataset!r}: missing {', '.join(missing)} in {str(folder)!r}; put the four IDX files "
            "of the dataset (as distributed, raw or .gz) in that folder, or set data.path to where they are"
        )
    return found
