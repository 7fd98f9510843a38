"""Stopping a run cleanly: SIGTERM (a scheduler's preemption) or Ctrl-C ends it after a checkpoint,
then train() raises TrainingInterrupted so that no caller mistakes a stopped run for a finished one."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from diffguide.errors import StoppedBySignal


class TrainingInterrupted(StoppedBySignal):
    """Training stopped on SIGINT/SIGTERM after checkpointing its current step.

    `signum` is the signal (the CLI exits 128 + signum: 130 for Ctrl-C, 143 for SIGTERM), `step` the
    step reached, `checkpoint` the file it was saved to and `run_dir` the run folder to resume."""

    def __init__(self, signum: int, step: int, checkpoint: Path, run_dir: Path):
        self.signum, self.step, self.checkpoint, self.run_dir = signum, step, Path(checkpoint), Path(run_dir)
        name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
        super().__init__(
            f"stopped at step {step} by {name}; checkpoint kept in {str(self.checkpoint)!r}; continue with "
            f"`diffguide train --config {self.run_dir / 'config.json'} --out {self.run_dir.parent} "
            f"--name {self.run_dir.name} --resume` "
            "(or the same train command plus --resume)"
        )


class StopOnSignal:
    """SIGTERM/SIGINT ask the loop to stop after the current step, checkpoint it and return; a second
    signal raises KeyboardInterrupt at once. Installed only from the main thread (Python delivers
    signals there and refuses handlers from other threads); elsewhere `requested` stays False.
    `signum` is the first signal received. Call restore() when done."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT.value
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
