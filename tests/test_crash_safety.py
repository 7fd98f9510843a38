"""Crash safety: SIGKILL mid-run then --resume equals an uninterrupted run; NaN losses stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from diffguide.config import apply_overrides, load_preset
from diffguide.train import train
from diffguide.train.loop import TrainingDiverged

SETS = [
    "train.steps=400",
    "train.batch_size=128",
    "train.ckpt_every=20",
    "train.keep_last=2",
    "train.log_every=20",
    "model.dropout=0.1",
]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_equal(tmp_path):
    # both runs in subprocesses with the same thread count: CPU results are bit-reproducible only then
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--preset", "tiny", "--no-progress", *[a for s in SETS for a in ("--set", s)]]
    base = [sys.executable, "-m", "diffguide", "train", *args]
    ref = subprocess.run([*base, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = load_file(str(tmp_path / "ref" / "tiny" / "checkpoints" / "ckpt-00000400.safetensors"))

    cmd = [*base, "--out", str(tmp_path / "crash")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "crash" / "tiny" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckpts.glob("ckpt-*.safetensors"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(ckpts.glob("ckpt-*.safetensors"))
    assert done and done[-1].name != "ckpt-00000400.safetensors", "killed too late to test anything"
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = load_file(str(ckpts / "ckpt-00000400.safetensors"))
    for key in reference:
        if key.startswith(("model.", "ema.", "optim.")):
            assert torch.equal(reference[key], resumed[key]), key
    assert torch.equal(reference["rng.generator"], resumed["rng.generator"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    sets = [
        "train.steps=200",
        "train.lr=1e6",
        "train.grad_clip=0",
        "train.warmup_steps=0",
        "train.ckpt_every=1",
    ]
    cfg = apply_overrides(load_preset("tiny"), sets)
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, tmp_path / "run", progress=False)
    msg = str(err.value)
    bad_step = int(msg.split(" at step ")[1].split(";")[0])
    assert "last good checkpoint" in msg
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"ckpt-{bad_step - 1:08d}.safetensors"
    tensors = load_file(str(tmp_path / "run" / "checkpoints" / latest))
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_nan_skip_policy_keeps_training(tmp_path, capsys):
    sets = [
        "train.steps=30",
        "train.lr=1e6",
        "train.grad_clip=0",
        "train.warmup_steps=0",
        'train.on_nan="skip"',
    ]
    cfg = apply_overrides(load_preset("tiny"), sets)
    train(cfg, tmp_path / "run", progress=False)
    assert "step skipped" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoints" / "ckpt-00000030.safetensors").is_file()


def test_sigterm_stops_gracefully_with_checkpoint_and_resumes(tmp_path):
    sets = ["train.steps=100000", "train.ckpt_every=100000", "train.log_every=10"]
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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "tiny" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped at step" in out
    step = int(out.split("stopped at step ")[1].split()[0])
    latest = (tmp_path / "tiny" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"ckpt-{step:08d}.safetensors"
