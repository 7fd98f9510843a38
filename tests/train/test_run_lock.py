"""One training process per run folder (train/lock.py), with real processes: a second train or resume is
refused naming the first one's PID; a lock left by a dead process is taken over, saying whose it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffguide.config import apply_overrides, load_preset
from diffguide.train import train
from diffguide.train.lock import LOCK_FILE, RunInUse
from tests.helpers import run_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock")


def wait_for_holder(lock: Path, pid: int, process: subprocess.Popen, seconds: float = 120) -> None:
    """Until the lock file names `pid` (the process has the run folder), or fail."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            if json.loads(lock.read_text()).get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{lock} never named process {pid}")


def refused_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_second_train_or_resume_into_a_busy_run_folder_is_refused_naming_the_pid(tmp_path):
    runs = tmp_path / "runs"
    first = ["train", "--preset", "tiny", "--set", "train.steps=1000000", "--out", str(runs), "--no-progress"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-m", "diffguide", *first],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_holder(runs / "tiny" / LOCK_FILE, holder.pid, holder)
        config = (runs / "tiny" / "config.json").read_bytes()
        for extra in (["--resume"], []):
            line = refused_line(run_cli(*first, *extra, timeout=120))
            assert line == (
                f"diffguide train: error: run folder '{runs / 'tiny'}' is in use by process {holder.pid} "
                f"(since {line.split('(since ')[1].split(')')[0]}), which is training into it; wait for it to "
                "finish (or stop it), or train into another --name"
            )
        assert (runs / "tiny" / "config.json").read_bytes() == config  # the refused ones wrote nothing
    finally:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=120) == 143
    assert not (runs / "tiny" / LOCK_FILE).exists()  # released and removed


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "since": 0}) + "\n")
    args = (
        "train",
        "--preset",
        "tiny",
        "--set",
        "train.steps=2",
        "--out",
        str(tmp_path / "runs"),
        "--no-progress",
    )
    result = run_cli(*args, timeout=120, env={"PYTHONWARNINGS": "default"})  # run_cli's default hides them
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warning = [line for line in result.stderr.splitlines() if "lock" in line]
    assert warning == [
        f"diffguide train: warning: taking over the lock of run folder '{run_dir}' left by process {dead.pid} "
        f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(0))}), which is no longer running"
    ]
    assert (run_dir / "checkpoints" / "ckpt-00000002.safetensors").is_file()
    assert not (run_dir / LOCK_FILE).exists()


def test_the_library_refuses_a_folder_another_process_holds_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / LOCK_FILE
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        cfg = apply_overrides(load_preset("tiny"), ["train.steps=2", "train.device=cpu"])
        with pytest.raises(RunInUse, match="is in use by another process"):
            train(cfg, run_dir, progress=False)
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # no config.json, no checkpoint
    finally:
        other.kill()
        other.wait()
    train(cfg, run_dir, progress=False)  # the kernel dropped the lock with its process
    assert (run_dir / "checkpoints" / "ckpt-00000002.safetensors").is_file()
