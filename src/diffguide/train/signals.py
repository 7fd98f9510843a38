"""Stopping a run cleanly: SIGTERM (a scheduler's preemption) or Ctrl-C ends it after a checkpoint."""

from __future__ import annotations

import signal
import threading


class StopOnSignal:
    """SIGTERM/SIGINT ask the loop to stop after the current step, checkpoint it and return; a second
    signal raises KeyboardInterrupt at once. Installed only from the main thread (Python delivers
    signals there and refuses handlers from other threads); elsewhere `requested` stays False.
    Call restore() when done."""

    def __init__(self):
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
