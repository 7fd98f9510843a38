"""Training throughput (samples/s): 1 vs 2 processes (torchrun, gloo), fp32 vs bf16 autocast, eager vs compile.

Each configuration trains the same preset for a fixed number of steps; throughput is the median of
the per-interval samples/s in metrics.jsonl after a warm-up. Run side by side in one process tree,
so the ratios are comparable even on a shared, noisy machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = 300
WARMUP_RECORDS = 2


def throughput(run_dir: Path) -> float:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in recs[WARMUP_RECORDS:]]
    return statistics.median(rates)


def run(preset: str, sets: list[str], out: Path, procs: int) -> float:
    args = ["-m", "diffguide", "train", "--preset", preset, "--out", str(out), "--no-progress"]
    sets = [f"train.steps={STEPS}", "train.log_every=25", f"train.ckpt_every={STEPS}", *sets]
    args += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ)
    if procs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // procs))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return float("nan")
    return throughput(out / preset)


def main() -> str:
    import torch

    presets = [("tree-edm", ["train.batch_size=2048"])]
    try:
        from diffguide.config import load_preset

        load_preset("digits-cfg")
        presets.append(("digits-cfg", ["train.batch_size=128"]))
    except Exception:
        pass
    variants = [
        ("1 process, fp32", [], 1),
        ("1 process, bf16 autocast", ['train.precision="bf16"'], 1),
        ("1 process, torch.compile", ["train.compile=true"], 1),
        ("2 processes (torchrun, gloo), fp32", [], 2),
    ]
    lines = [
        f"Training throughput on {os.cpu_count()} CPU cores, torch {torch.__version__}, {STEPS} steps, "
        "median samples/s after warm-up (higher is better); ratio vs 1 process fp32.",
        "",
        "| preset | configuration | samples/s | ratio |",
        "|---|---|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for preset, base in presets:
            ref = None
            for i, (label, sets, procs) in enumerate(variants):
                rate = run(preset, base + sets, Path(tmp) / f"{preset}-{i}", procs)
                ref = ref or rate
                lines.append(f"| {preset} | {label} | {rate:,.0f} | {rate / ref:.2f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results" / "training.md"
    out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
