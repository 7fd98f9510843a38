"""Distributed training with 2 real CPU processes under torchrun (gloo)."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from diffguide.config import apply_overrides, load_preset
from diffguide.errors import CheckpointError
from diffguide.train import state as training_state
from diffguide.train import train
from diffguide.train.checkpoint import checkpoint_name, list_checkpoints, read_checkpoint
from diffguide.train.logs import read_metrics

OVERRIDES = [
    "train.steps=12",
    "train.batch_size=64",
    "train.ckpt_every=6",
    "train.log_every=3",
    "model.dropout=0.0",
]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from safetensors.torch import save_file
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train

    out, overrides = sys.argv[1], sys.argv[2:]
    cfg = apply_overrides(load_preset("tiny"), overrides)
    rank = os.environ["RANK"]

    def dump(net, ema):
        tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/rank{rank}.safetensors")

    train(cfg, f"{out}/run", progress=False, on_finish=dump)
    """
)


def torchrun(args: list[str], cwd, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
@pytest.mark.e2e
def test_two_ranks_identical_and_match_single_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    torchrun([str(script), str(tmp_path), *OVERRIDES], cwd=tmp_path)
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    # DDP keeps replicas in lock-step: bit-identical weights and EMA on both ranks
    assert rank0.keys() == rank1.keys() and any(k.startswith("ema.") for k in rank0)
    different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not different, different
    # each rank trains on its half of the same global batch, so one process with the same global
    # batch takes the same steps up to floating-point reduction order (measured max |diff| ~1e-7)
    single = {}

    def keep(net, ema):
        single.update({f"model.{k}": v.clone() for k, v in net.state_dict().items()})
        single.update({f"ema.{k}": v.clone() for k, v in ema.shadow.items()})

    cfg = apply_overrides(load_preset("tiny"), OVERRIDES)
    train(cfg, tmp_path / "single", progress=False, on_finish=keep)
    worst = max(float((rank0[k] - single[k]).abs().max()) for k in rank0)
    print(f"max |weight or EMA difference| 2 ranks vs 1 process: {worst:.3e}")
    assert worst < 1e-5, worst
    # rank 0 alone wrote the run folder: one metrics record per logged step, one TensorBoard writer,
    # and its checkpoint holds rank 0's final state
    run = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run)] == [3, 6, 9, 12]
    assert len(list((run / "tb").iterdir())) == 1
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        checkpoint_name(6),
        checkpoint_name(12),
    ]
    final, _ = read_checkpoint(run / "checkpoints" / checkpoint_name(12))
    assert all(torch.equal(final[k], rank0[k]) for k in rank0)


def _resume_rank(rank: int, port: int, run_dir, results) -> None:
    """One of two forked ranks resuming run_dir; rank 1 finds no checkpoint, as on a node whose --out
    is a local folder."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    )
    os.environ["MASTER_PORT"] = str(port)
    if rank == 1:
        training_state.latest_good_checkpoint = lambda folder: None
    try:
        train(apply_overrides(load_preset("tiny"), OVERRIDES), run_dir, progress=False, resume=True)
        results.put((rank, "no error"))
    except CheckpointError as e:
        results.put((rank, str(e)))


def test_ranks_resuming_different_checkpoints_refuse(tmp_path):
    """Every rank must resume from the same checkpoint; otherwise all stop with an error naming each
    rank's step (two gloo ranks forked from this process: no torchrun start-up cost)."""
    cfg = apply_overrides(load_preset("tiny"), OVERRIDES)
    train(cfg, tmp_path / "run", progress=False, stop_after=6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    ranks = [context.Process(target=_resume_rank, args=(r, port, tmp_path / "run", results)) for r in (0, 1)]
    for p in ranks:
        p.start()
    try:
        messages = dict(results.get(timeout=30) for _ in ranks)
    finally:
        for p in ranks:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    for rank in (0, 1):
        assert "rank 0: step 6 (sha256 " in messages[rank], messages[rank]
        assert "rank 1: no checkpoint" in messages[rank] and "share" in messages[rank], messages[rank]
    assert "this rank (0) read" in messages[0] and checkpoint_name(6) in messages[0]
    assert "this rank (1) read no checkpoint" in messages[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_torchrun_cli_resume_is_bit_equal(tmp_path):
    """`torchrun -m diffguide train`, interrupted after step 6 and resumed, equals the full run."""
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    common = ["-m", "diffguide", "train", "--preset", "tiny", "--out", str(tmp_path), "--no-progress", *sets]
    torchrun(common, cwd=tmp_path)
    ckpt_dir = tmp_path / "tiny" / "checkpoints"
    full = load_file(str(ckpt_dir / "ckpt-00000012.safetensors"))
    # simulate an interruption right after the step-6 checkpoint
    (ckpt_dir / "ckpt-00000012.safetensors").unlink()
    (ckpt_dir / "latest").write_text("ckpt-00000006.safetensors\n")
    res = torchrun([*common, "--resume"], cwd=tmp_path)
    assert "from ckpt-00000006" in res.stdout + res.stderr
    resumed = load_file(str(ckpt_dir / "ckpt-00000012.safetensors"))
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
