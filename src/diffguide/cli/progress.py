"""Progress bars for the slow commands (sample, eval, likelihood, tune-grid), fed by the step callback.

One bar per command, on stderr, counting samples (or data points) with an elapsed time and an ETA.
The bar is drawn only on a terminal (tqdm's disable=None), so logs and pipes stay clean, and not at
all with --no-progress. It is fed by the sampler callback (docs/samplers.md: {"i", "x", "sigma",
"sigma_next", "denoised"}, plus "start" from `generate`), so it moves once per sampler step and
redraws at least every half second while steps keep coming; a likelihood solve feeds it the noise
level its ODE solver has reached; tune-grid's counts denoiser evaluations against an upper bound of
them (its searches may stop early). tqdm is imported inside, so building the parser stays fast.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}]"


def add_progress_flag(p) -> None:
    """The --no-progress flag, the same on every command with a bar."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar (drawn only on a terminal)")


@contextlib.contextmanager
def progress_bar(total: float, desc: str, unit: str, *, enabled: bool = True, file=None) -> Iterator:
    """A tqdm bar with ETA, closed on exit. enabled=True draws it on a terminal only (None = tqdm's
    disable-on-non-TTY); file: where to draw (default stderr)."""
    from tqdm import tqdm

    bar = tqdm(
        total=total, desc=desc, unit=unit, bar_format=BAR_FORMAT, disable=None if enabled else True,
        file=file or sys.stderr, mininterval=0.5, miniters=1, dynamic_ncols=True,
    )  # fmt: skip
    try:
        yield bar
    finally:
        bar.close()


def study_bars(args) -> Callable | None:
    """The bar factory the study takes (study.bars: (total, desc, unit) -> progress_bar), or None with
    --no-progress or when stderr is not a terminal (so the study's training bars stay off too)."""
    if args.no_progress or not sys.stderr.isatty():
        return None
    return lambda total, desc, unit: progress_bar(total, desc, unit)


def sampling_callback(bar, steps: int | None = None, then: Callable | None = None) -> Callable[[dict], None]:
    """samplers.generation.sampling_callback (a sampler callback moving `bar` by samples done), imported
    when called: building the parser imports no torch."""
    from diffguide.samplers.generation import sampling_callback as feed

    return feed(bar, steps, then)


def likelihood_callback(bar) -> Callable[[dict], None]:
    """A likelihood callback (run_likelihood's {"sigma", "start", "size", "n", "sigma_min",
    "sigma_max"}) that moves `bar` (counting data points) by how far each batch's ODE solve has come
    in log sigma, from sigma_min to sigma_max."""

    def callback(info: dict) -> None:
        if bar.total != info["n"]:  # fewer held-out points than asked for
            bar.total = info["n"]
        low, high = math.log(info["sigma_min"]), math.log(info["sigma_max"])
        fraction = min(max((math.log(info["sigma"]) - low) / (high - low), 0.0), 1.0)
        done = min(info["start"] + info["size"] * fraction, info["n"])
        if done > bar.n:
            bar.update(done - bar.n)

    return callback


def count_callback(bar) -> Callable[[int, int], None]:
    """A progress(done, total) callback (tune_grid's denoiser evaluations) that moves `bar` to done of
    total; the total may change as the work goes (an upper bound that is revised)."""

    def callback(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        if done > bar.n:
            bar.update(done - bar.n)

    return callback


def finish(bar) -> None:
    """Close the count at what was done: work that stopped short of its upper bound shows 100%."""
    if bar.n and bar.total != bar.n:
        bar.total = bar.n
        bar.refresh()
