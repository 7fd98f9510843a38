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


def file_digests(folder: Path) -> dict[str, str]:
    """Every file below `folder` (relative path -> sha256): what a refused command must not change."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_line_exit_2(result: subprocess.CompletedProcess, command: str) -> str:
    """Exit 2, no traceback, exactly one stderr line `diffguide COMMAND: error: ...`; returns the line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"diffguide {command}: error: "), lines[0]
    return lines[0]


def random_run(preset: str, overrides=()):
    """A run of `preset` (with overrides) whose network has random weights (zero-initialised output
    layers would hide perturbations of the network), as a Run in memory."""
    import torch

    from diffguide.config import apply_overrides, load_preset
    from diffguide.data import make_dataset
    from diffguide.models.build import build_denoiser, build_network
    from diffguide.models.runs import Run
    from diffguide.processes import make_process

    cfg = apply_overrides(load_preset(preset), list(overrides))
    dataset = make_dataset(cfg.data)
    net = build_network(cfg, dataset)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    denoiser = build_denoiser(cfg, net).eval()
    return Run(Path("unused"), cfg, dataset, make_process(cfg.diffusion.process), denoiser, 0, Path("unused"))
