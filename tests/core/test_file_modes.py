"""Files users share are written with the umask's permissions (0644 under umask 022), not mkstemp's
0600: another user of a shared runs folder can read config.json, the checkpoints and the logs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, expected):
    """Text and safetensors files written through diffguide.io get 0666 less the umask (as open()
    would give); a replaced file keeps the permissions it had."""
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    kept.chmod(0o640)
    code = f"""
import os, torch
os.umask({umask:#o})
from diffguide.io import atomic_save_tensors, atomic_write_text
atomic_write_text({str(tmp_path / "a.json")!r}, "{{}}")
atomic_save_tensors({str(tmp_path / "w.safetensors")!r}, {{"w": torch.ones(2)}}, {{}})
atomic_write_text({str(kept)!r}, "[]")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "a.json") == expected
    assert mode(tmp_path / "w.safetensors") == expected
    assert mode(kept) == 0o640 and kept.read_text() == "[]"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_a_trained_run_is_readable_by_others_under_umask_022(tmp_path):
    """`diffguide train` under umask 022: config.json, every checkpoint, `latest` and metrics.jsonl
    are 0644, so a colleague sharing the runs folder can load the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = ["train.steps=4", "train.ckpt_every=2", "train.log_every=2"]
    cmd = [
        sys.executable,
        "-m",
        "diffguide",
        "train",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    cmd += [a for s in sets for a in ("--set", s)]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=300, preexec_fn=lambda: os.umask(0o022)
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "tiny"
    files = [run / "config.json", run / "metrics.jsonl", run / "checkpoints" / "latest"]
    files += sorted((run / "checkpoints").glob("ckpt-*.safetensors"))
    assert len(files) == 5
    assert {str(f.relative_to(run)): oct(mode(f)) for f in files} == {
        str(f.relative_to(run)): oct(0o644) for f in files
    }
