"""Shared fixtures: exact mixtures, one tiny trained run (built once per test session, shared by workers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from tests.helpers import run_cli

# Two xdist workers on a 2-core machine: one intra-op thread each avoids oversubscription (and keeps
# timings of the heavy mixture tests stable). Results do not depend on it: every test compares
# against closed forms or between runs in the same process.
torch.set_num_threads(1)


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
