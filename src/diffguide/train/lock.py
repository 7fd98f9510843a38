"""One training process per run folder: RUN/train.lock, held with flock while train() writes the run.

A second train (or a resume) into the same folder is refused, naming the process that holds it. The
kernel drops a flock when its process ends, however it ends, so a lock file left by a killed process
is stale by construction: the next run takes it over and says whose it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from diffguide.errors import CheckpointError, output_error

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None

LOCK_FILE = "train.lock"


class RunInUse(CheckpointError):
    """Another process is training into this run folder."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold RUN/train.lock for the block (creating RUN); RunInUse when another process holds it.

    On exit the lock file is removed, and RUN too when this call created it and it is still empty (a
    run refused before writing anything leaves nothing behind)."""
    if not enabled or fcntl is None:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _acquire(run_dir / LOCK_FILE, run_dir)
    except OSError as e:
        raise output_error(run_dir, e) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            (run_dir / LOCK_FILE).unlink()
        os.close(fd)  # releases the flock
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


def _acquire(path: Path, run_dir: Path) -> int:
    """An open descriptor of `path` holding its exclusive flock, our holder record written in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # open() applies the umask: 0644 usually
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunInUse(
                f"run folder {str(run_dir)!r} is in use by {_describe(holder)}, which is training into it; "
                "wait for it to finish (or stop it), or train into another --name"
            ) from None
        if _same_file(fd, path):  # not a file its last holder removed between our open and our flock
            break
        os.close(fd)
    previous = _read(fd)
    if previous.get("pid") is not None:
        warnings.warn(
            f"taking over the lock of run folder {str(run_dir)!r} left by {_describe(previous)}, which "
            "is no longer running",
            stacklevel=4,
        )
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv, "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict:
    """The holder record in the lock file ({} when empty or unreadable: being written, or not ours)."""
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict) -> str:
    """'process 1234 on host (since 2026-01-01 12:00:00)', as far as the record tells."""
    if not isinstance(holder.get("pid"), int):
        return "another process"
    text = f"process {holder['pid']}"
    if holder.get("host") and holder["host"] != socket.gethostname():
        text += f" on {holder['host']}"
    if isinstance(holder.get("since"), (int, float)):
        text += f" (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['since']))})"
    return text
