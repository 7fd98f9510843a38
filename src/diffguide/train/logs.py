"""Run logs: a JSONL metrics file, TensorBoard event files and a console progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from diffguide.io import atomic_write_text


class RunLogger:
    """Writes each logged step to metrics.jsonl and TensorBoard; shows a progress bar with loss and speed."""

    def __init__(self, run_dir: Path, start_step: int, total_steps: int, progress: bool = True):
        self.run_dir = Path(run_dir)
        purge_metrics(self.run_dir / "metrics.jsonl", start_step)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step or None)
        self.bar = tqdm(
            total=total_steps, initial=start_step, disable=not progress, unit="step", dynamic_ncols=True
        )
        self.last_time, self.last_step = time.perf_counter(), start_step

    def advance(self, step: int) -> None:
        """Move the bar to `step` (every step, so it moves from step 1, not from the first log)."""
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def log(self, step: int, values: dict[str, float], batch_size: int) -> None:
        now = time.perf_counter()
        elapsed = max(now - self.last_time, 1e-9)
        rate = (step - self.last_step) / elapsed
        record = {
            "step": step,
            **values,
            "steps_per_s": rate,
            "samples_per_s": rate * batch_size,
            "threads": torch.get_num_threads(),  # the intra-op threads that speed was measured with
            "time": time.time(),
        }
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in values.items():
            self.tb.add_scalar(f"train/{key}", value, step)
        self.tb.add_scalar("train/samples_per_s", rate * batch_size, step)
        self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", refresh=False)
        self.bar.update(step - self.bar.n)
        self.last_time, self.last_step = now, step

    def close(self) -> None:
        self.bar.close()
        self.tb.flush()
        self.tb.close()
        self.jsonl.close()


def purge_metrics(path: Path, start_step: int) -> None:
    """Drop the records after start_step from a metrics file, as TensorBoard's purge_step does.

    A run resumed from step S repeats the steps after S that it had logged before it stopped; without
    this, metrics.jsonl would hold two records for each. Torn lines (a crash mid-write) go too, so the
    next record starts on a line of its own. Rewritten atomically: a crash here keeps the old file.
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= start_step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (empty if none); torn last lines are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
