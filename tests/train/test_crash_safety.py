"""Crash safety: SIGKILL mid-run then --resume equals an uninterrupted run; non-finite steps stop or skip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffguide.config import apply_overrides, load_preset
from diffguide.errors import DiffguideError
from diffguide.train import TrainingInterrupted, loop, train
from diffguide.train.checkpoint import checkpoint_name, list_checkpoints, read_checkpoint, save_checkpoint
from diffguide.train.logs import read_metrics
from diffguide.train.step import TrainingDiverged

SETS = [
    "train.steps=400",
    "train.batch_size=128",
    "train.ckpt_every=20",
    "train.keep_last=2",
    "train.log_every=20",
    "model.dropout=0.1",
]


@pytest.mark.slow
@pytest.mark.e2e
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


# A non-finite step injected at a known step: the network's forward at that training step returns NaN
# ("loss"), or returns finite values whose gradient is infinite ("grad": a finite loss, the overflow in
# the backward pass that bf16 can produce).
BAD_STEP = 5
INJECT_SETS = ["train.steps=9", "train.ckpt_every=3", "train.log_every=1", 'train.on_nan="skip"']


def break_step(monkeypatch, kind: str, step: int = BAD_STEP) -> None:
    real_build = loop.build_network

    def build(*args, **kwargs):
        net = real_build(*args, **kwargs)
        calls = []

        def hook(module, inputs, output):
            if not module.training:
                return None
            calls.append(None)  # one forward per training step (accum_steps = 1)
            if len(calls) != step:
                return None
            if kind == "loss":
                return output * float("nan")
            output.register_hook(lambda grad: torch.full_like(grad, float("inf")))
            return output

        net.register_forward_hook(hook)
        return net

    monkeypatch.setattr(loop, "build_network", build)


def train_state(run_dir, step: int) -> dict[str, torch.Tensor]:
    tensors, meta = read_checkpoint(run_dir / "checkpoints" / checkpoint_name(step))
    assert meta["step"] == str(step)
    return tensors


@pytest.fixture(scope="module")
def skipped_by_hand(tmp_path_factory):
    """The final state of a run whose update at BAD_STEP is left out by construction: train to
    BAD_STEP - 1, write the BAD_STEP checkpoint by hand with those weights, EMA and optimizer state but
    the data generator as it is after BAD_STEP's draws (taken from a normal run), resume to the end."""
    cfg = apply_overrides(load_preset("tiny"), INJECT_SETS)
    root = tmp_path_factory.mktemp("skip-reference")
    train(cfg, root / "a", progress=False, stop_after=BAD_STEP - 1)
    train(cfg, root / "b", progress=False, stop_after=BAD_STEP)
    tensors, meta = read_checkpoint(root / "a" / "checkpoints" / checkpoint_name(BAD_STEP - 1))
    tensors["rng.generator"] = train_state(root / "b", BAD_STEP)["rng.generator"]
    kept = {k: v for k, v in meta.items() if k in ("optimizer_groups", "ema_decay")}
    save_checkpoint(root / "a" / "checkpoints", BAD_STEP, tensors, kept, keep_last=3)
    train(cfg, root / "a", progress=False, resume=True)
    final = train_state(root / "a", cfg.train.steps)
    # the reference has teeth: a run that made the update ends elsewhere
    train(cfg, root / "c", progress=False)
    assert not torch.equal(
        final["ema.inp.weight"], train_state(root / "c", cfg.train.steps)["ema.inp.weight"]
    )
    return final


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_is_skipped_exactly(tmp_path, monkeypatch, capsys, skipped_by_hand, kind):
    """on_nan=skip: a NaN loss, or a finite loss with infinite gradients, at step 5 leaves weights, EMA
    and optimizer untouched that step; the run ends bit-equal to one that left that update out."""
    break_step(monkeypatch, kind)
    cfg = apply_overrides(load_preset("tiny"), INJECT_SETS)
    train(cfg, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    phrase = "loss is nan" if kind == "loss" else "gradient norm is"
    assert f"step {BAD_STEP}: {phrase}" in out and "step skipped" in out, out
    final = train_state(tmp_path / "run", cfg.train.steps)
    assert sorted(final) == sorted(skipped_by_hand)
    different = [k for k in final if not torch.equal(final[k], skipped_by_hand[k])]
    assert not different, different[:8]
    logged = [r["step"] for r in read_metrics(tmp_path / "run")]
    assert logged == [s for s in range(1, cfg.train.steps + 1) if s != BAD_STEP]  # no record for it


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_stops_at_that_step(tmp_path, monkeypatch, kind):
    """on_nan=stop (the default): the error names the step and what was not finite; the checkpoint of
    the step before is the latest, and none after it is written."""
    break_step(monkeypatch, kind)
    cfg = apply_overrides(load_preset("tiny"), [*INJECT_SETS, 'train.on_nan="stop"', "train.ckpt_every=1"])
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, tmp_path / "run", progress=False)
    phrase = "loss is nan" if kind == "loss" else "gradient norm is"
    assert phrase in str(err.value) and f"at step {BAD_STEP};" in str(err.value), str(err.value)
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == checkpoint_name(BAD_STEP - 1)
    assert checkpoint_name(BAD_STEP - 1) == list_checkpoints(ckpts)[-1].name


def start_long_training(tmp_path) -> subprocess.Popen:
    """`diffguide train` of a run far too long to finish, started once it has logged a few steps."""
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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "tiny" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_with_checkpoint_exit_code_and_resume_hint(tmp_path, sig, code):
    """SIGTERM / Ctrl-C: the step reached is checkpointed, the exit code is 128 + signum (so
    `train && sample` does not sample a half-trained model), one stderr line names the checkpoint and
    the command that resumes, and that command continues from the checkpoint."""
    proc = start_long_training(tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diffguide train: stopped at step ")
    assert signal.Signals(sig).name in lines[0]
    step = int(lines[0].split("stopped at step ")[1].split()[0])
    run = tmp_path / "tiny"
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"ckpt-{step:08d}.safetensors"
    assert str(run / "checkpoints" / latest) in lines[0]
    resume = lines[0].split("continue with `")[1].split("`")[0].split()
    assert resume[:2] == ["diffguide", "train"] and "--resume" in resume
    # the hint resumes the same run: its config, its folder (a few more steps, then stop again)
    cfg = apply_overrides(
        load_preset("tiny"), ["train.steps=100000", "train.ckpt_every=100000", "train.log_every=10"]
    )
    args = resume[2:]
    assert args[args.index("--config") + 1] == str(run / "config.json")
    assert Path(args[args.index("--out") + 1]) / args[args.index("--name") + 1] == run
    train(cfg, run, resume=True, progress=False, stop_after=step + 1)
    assert (run / "checkpoints" / "latest").read_text().strip() == f"ckpt-{step + 1:08d}.safetensors"


def test_library_train_raises_training_interrupted_after_checkpointing(tmp_path):
    """A SIGINT during train() (here raised from the logging hook) checkpoints and raises
    TrainingInterrupted, a DiffguideError: the library does not return as if the run had finished."""
    cfg = apply_overrides(
        load_preset("tiny"), ["train.steps=1000", "train.ckpt_every=1000", "train.log_every=5"]
    )
    finished = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, default_int_handler in a terminal
    with pytest.raises(TrainingInterrupted) as err:
        train(
            cfg, tmp_path / "run", progress=False,
            on_log=lambda record: signal.raise_signal(signal.SIGINT), on_finish=lambda *a: finished.append(1),
        )  # fmt: skip
    e = err.value
    assert isinstance(e, DiffguideError)
    assert (e.step, e.signum, e.exit_code) == (5, signal.SIGINT, 130)
    assert e.checkpoint == tmp_path / "run" / "checkpoints" / "ckpt-00000005.safetensors"
    assert e.checkpoint.is_file() and not finished
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
