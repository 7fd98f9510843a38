"""Progress bars of the study's long phases (`diffguide demo`, `diffguide guidance-bench`).

The study draws nothing itself: its functions take `bars`, a function (total, desc, unit) -> a context
manager giving a bar with `n` and `update(k)` (the CLI passes its tqdm `progress_bar`), or None for no
bar. Sampling moves the bar at every sampler step (samplers.generation.sampling_callback).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

BarFactory = Callable[[float, str, str], AbstractContextManager]


class _Silent:
    """A bar that counts and draws nothing."""

    def __init__(self):
        self.n = 0.0

    def update(self, k: float) -> None:
        self.n += k


@contextlib.contextmanager
def phase_bar(bars: BarFactory | None, total: float, desc: str, unit: str = "samples") -> Iterator:
    """bars(total, desc, unit), filled to `total` on a normal exit (a phase may do less than it
    counted, e.g. a skipped method); a silent bar when bars is None."""
    if bars is None:
        yield _Silent()
        return
    with bars(total, desc, unit) as bar:
        yield bar
        if bar.n < total:
            bar.update(total - bar.n)
