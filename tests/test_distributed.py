"""Distributed training with 2 real CPU processes under torchrun (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from diffguide.config import apply_overrides, load_preset
from diffguide.train import train

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
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f"{out}/rank{rank}.safetensors")

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
def test_two_ranks_identical_and_match_single_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    torchrun([str(script), str(tmp_path), *OVERRIDES], cwd=tmp_path)
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    # DDP keeps replicas in lock-step: bit-identical weights on both ranks
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    # each rank trains on its half of the same global batch, so one process with the same global
    # batch takes the same steps up to floating-point reduction order (measured max |diff| ~1e-7)
    single = {}
    cfg = apply_overrides(load_preset("tiny"), OVERRIDES)
    train(
        cfg, tmp_path / "single", progress=False, on_finish=lambda net, ema: single.update(net.state_dict())
    )
    worst = max(float((rank0[k] - single[k]).abs().max()) for k in rank0)
    print(f"max |weight difference| 2 ranks vs 1 process: {worst:.3e}")
    assert worst < 1e-5, worst
    # rank 0 alone wrote the run folder
    run = tmp_path / "run"
    assert (run / "config.json").is_file() and (run / "checkpoints" / "latest").is_file()
    assert len(list((run / "tb").iterdir())) == 1


@pytest.mark.slow
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
