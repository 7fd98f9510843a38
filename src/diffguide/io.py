"""Files and values from the user: atomic writes (a crash leaves the old file or the new one, never a
partial one) and 'key=value' strings read as TOML values."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from diffguide.errors import ConfigError

if TYPE_CHECKING:
    import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temporary file in path's folder, fsync it, rename it to path, fsync the folder.

    A crash at any point leaves either the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file in the same folder, fsync, rename, fsync folder."""
    _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors.save_file through a temporary file + rename."""
    from safetensors.torch import save_file  # here: reading configs (the CLI's parser) needs no torch

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def parse_override(text: str) -> tuple[str, object]:
    """'train.steps=100' -> ('train.steps', 100); the value is read as TOML, else as a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.steps=100")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value
