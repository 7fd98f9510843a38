"""Shared fixtures: exact mixtures, one tiny trained run (built once per test session, shared by workers)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

# Two xdist workers on a 2-core machine: one intra-op thread each avoids oversubscription (and keeps
# timings of the heavy mixture tests stable). Results do not depend on it: every test compares
# against closed forms or between runs in the same process.
torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m diffguide ARGS` in a subprocess (the real entry point), output captured."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffguide", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tree():
    """The two-class tree mixture (the exact denoiser of the default toy)."""
    from diffguide.mixtures import tree_mixture

    return tree_mixture()


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory) -> Path:
    """A run folder written by `diffguide train --preset tiny --out DIR` (60 steps, a few seconds).

    Built once for the whole session: under pytest-xdist each worker is its own process, so the first
    worker trains under a file lock in the shared base temp folder and the others reuse the result.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "cli-runs"
    run_dir = out / "tiny"
    with FileLock(str(shared / "cli-runs.lock")):
        done = out / "done.json"
        if not done.is_file():
            result = run_cli("train", "--preset", "tiny", "--out", str(out), "--no-progress")
            done.write_text(
                json.dumps(
                    {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
                )
            )
        record = json.loads(done.read_text())
    if record["returncode"] != 0:
        pytest.fail(f"`diffguide train --preset tiny` failed:\n{record['stdout']}\n{record['stderr']}")
    return run_dir


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
