"""What the machine refuses, through the real executable: a device it lacks, a write that does not fit.

A full disk is the kernel's file-size limit (RLIMIT_FSIZE) in the subprocess: a write past it fails with
EFBIG exactly where a full disk fails with ENOSPC, inside the real writers, with no code of ours patched.
"""

from __future__ import annotations

import hashlib
import resource
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import one_line_exit_2, run_cli

LIMIT = 32 * 1024  # bytes: config.json and the logs fit, a tiny run's checkpoint (about 70 KB) does not


def small_disk() -> None:
    """preexec_fn: no file may grow past LIMIT; a write past it fails (EFBIG) instead of killing us."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes still lying around."""
    return [p.name for p in folder.rglob("*.tmp")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cuda", "train.device='cuda' but this torch is built without CUDA"),
        ("cuda:1", "train.device='cuda:1' but this torch is built without CUDA"),
        ("mps", "train.device='mps' but MPS (Apple GPUs) is not available here; available: cpu"),
        ("foo", "unknown train.device 'foo'; choices: auto, cpu, cuda, cuda:N or mps"),
        ("cude", "unknown train.device 'cude'; did you mean 'cuda'"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line_and_writes_nothing(tmp_path, device, expected):
    if device.startswith("cuda") and torch.version.cuda is not None:
        expected = expected.replace("this torch is built without CUDA", "no CUDA GPU is visible")
    result = run_cli(
        "train", "--preset", "tiny", "--set", f"train.device={device}", "--out", str(tmp_path / "runs")
    )
    line = one_line_exit_2(result, "train")
    assert expected in line
    if device.startswith("cuda") or device == "mps":
        assert "available: cpu" in line
    assert not (tmp_path / "runs").exists()


def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_partial_file(tmp_path):
    runs = tmp_path / "runs"
    args = ("train", "--preset", "tiny", "--set", "train.steps=2", "--out", str(runs), "--no-progress")
    result = run_cli(*args, preexec_fn=small_disk, timeout=120)
    line = one_line_exit_2(result, "train")
    checkpoints = runs / "tiny" / "checkpoints"
    assert f"cannot write '{checkpoints / 'ckpt-00000002.safetensors'}': File too large" in line
    assert "nothing half-written was left in its place" in line
    assert not list(checkpoints.glob("ckpt-*"))  # glob of a missing folder is empty too
    assert leftovers(runs) == []


def test_disk_full_while_writing_samples_keeps_the_previous_file(cli_run, tmp_path):
    out = tmp_path / "x.npz"
    assert run_cli("sample", str(cli_run), "--n", "10", "--out", str(out), "--no-progress").returncode == 0
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    # 20000 samples of 2 float32 are 160 KB: past the limit
    args = ("sample", str(cli_run), "--n", "20000", "--steps", "2", "--out", str(out), "--no-progress")
    result = run_cli(*args, preexec_fn=small_disk, timeout=120)
    line = one_line_exit_2(result, "sample")
    assert f"cannot write '{out}': File too large" in line
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert after == before  # the earlier samples, byte for byte, and no temporary file
