"""Helpers the tests share: the real command in a subprocess, a time limit, folders built once per session."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from filelock import FileLock


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None, **popen
) -> subprocess.CompletedProcess:
    """`python -m diffguide ARGS` in a subprocess (the real entry point), output captured.

    env: variables set on top of this process's; popen: further subprocess.run arguments."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "diffguide", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        **popen,
    )


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (instead of hanging) when the block runs longer than `seconds` (SIGALRM; main thread)."""

    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def shared_runs(tmp_path_factory, name: str, build) -> Path:
    """A folder built once per session by `build(folder)`, shared by pytest-xdist workers (file lock)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / name
    with FileLock(str(base / f"{name}.lock")):
        if not (out / "done").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build(out)
            (out / "done").write_text("ok")
    return out


def copy_runs(source: Path, dest: Path) -> Path:
    """A private copy of the source runs (tests write into their runs folder)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("done"))
    return dest
