"""Files and values from the user: atomic writes (a crash leaves the old file or the new one, never a
partial one) and 'key=value' strings read as TOML values."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from diffguide.errors import ConfigError

if TYPE_CHECKING:
    import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# Recorded in the images diffguide writes (a PNG's "Software" text, a GIF's comment), so a later command
# knows a file at its --out is an earlier output it may replace, not a user's picture.
SOFTWARE_TAG = "diffguide"


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temporary file in path's folder, fsync it, rename it to path, fsync the folder.

    A crash at any point leaves either the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp makes it 0600: others sharing the runs folder could not read it
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk's write() names no file: name it
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(f) on a binary file open for writing, then put it at `path` atomically (see
    _atomic_write). For writers that take a file object: np.savez, PIL's save, matplotlib's savefig
    (give them the format, e.g. format=file_format(path): the temporary file's name ends in .tmp)."""

    def write_to(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    _atomic_write(path, write_to)


def file_format(path: Path) -> str:
    """The format a file's suffix names, for writers given a file object: 'x.png' -> 'png'."""
    return Path(path).suffix.lstrip(".").lower()


def _file_mode(path: Path) -> int:
    """The permissions a written file gets: those of the file it replaces, else what open() would give
    a new file (0666 less the umask: 0644 under the usual umask 022)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells (/proc), else set and put back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    """Tensors in the safetensors format, through a temporary file + rename."""
    from safetensors.torch import save  # here: reading configs (the CLI's parser) needs no torch

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # serialised here and written by Python: a full disk is then an OSError naming the file, where
    # safetensors' own save_file raises a SafetensorError
    atomic_write_bytes(path, save(cpu, metadata=metadata))


def check_output_folder(
    out: Path, command: str, is_earlier_output: Callable[[Path], bool], *, force: bool = False
) -> None:
    """Refuse, before any work, an output folder `out` that `diffguide COMMAND` may not write into.

    Accepted: a new or empty folder, a folder holding an earlier output of the command
    (is_earlier_output(out)), and with force any folder (its files of the names the command writes are
    replaced, the others kept). Refused: a file, and without force a non-empty folder of other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {str(out)!r} is a file; give a folder (new, empty, or an earlier `diffguide {command}` "
            "--out to redo)"
        )
    if force or not out.is_dir() or not any(out.iterdir()) or is_earlier_output(out):
        return
    raise ConfigError(
        f"--out {str(out)!r} is a non-empty folder that `diffguide {command}` did not write; choose a new "
        f"or empty folder (or an earlier `diffguide {command}` --out to redo), or add --force to write into "
        "it (files of the names it writes are replaced, the others kept)"
    )


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
