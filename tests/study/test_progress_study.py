"""Progress of `demo` and `guidance-bench`: a bar per training run and one over each sampling phase,
moved at every sampler step, on a terminal only and never with --no-progress."""

from __future__ import annotations

import contextlib
import re

import pytest

from diffguide.grids import make_sigmas
from diffguide.mixtures import tree_mixture
from diffguide.samplers.generation import generate, sampling_callback
from diffguide.study.bars import phase_bar
from diffguide.study.guidance_bench import DATASETS
from tests.cli.test_progress import run_on_terminal


class Bar:
    def __init__(self, total):
        self.total, self.n, self.positions = total, 0.0, []

    def update(self, k):
        self.n += k
        self.positions.append(self.n)


def test_one_bar_over_several_sample_sets_rises_step_by_step_to_its_total():
    """Two sets of 6 samples (batches of 4, 3 steps) on one bar of 12: the second set starts where
    the first ended (offset), every step moves it, it never goes back; the phase ends at its total."""
    sigmas = make_sigmas("karras", 3, sigma_min=0.002, sigma_max=80.0)  # 3 steps, ending in 0
    steps = len(sigmas) - 1
    made = []

    @contextlib.contextmanager
    def bars(total, desc, unit):
        made.append(Bar(total))
        yield made[-1]

    with phase_bar(bars, 13, "sampling 2 sets") as bar:  # one more than done: filled on exit
        for k in range(2):
            callback = sampling_callback(bar, steps, offset=k * 6)
            generate(tree_mixture(), 6, (2,), sigmas=sigmas, sampler="euler", batch_size=4, callback=callback)
        done = list(bar.positions)
    first = [4 * (i + 1) / steps for i in range(steps)] + [4 + 2 * (i + 1) / steps for i in range(steps)]
    assert done == pytest.approx(first + [6 + p for p in first])
    assert made[0].n == 13
    with phase_bar(None, 5, "nothing drawn") as silent:
        silent.update(2)
        assert silent.n == 2


@pytest.mark.e2e
def test_demo_draws_training_and_sampling_bars_on_a_terminal_and_none_with_no_progress(tmp_path):
    out = str(tmp_path / "demo")
    code, err = run_on_terminal("demo", "--fast", "--out", out, cwd=tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert "300/300" in err and "150/150" in err, err  # the expert's and the amateur's training bars
    # the sweep's 7 sets (none, autoguidance x 2, CFG x 2, CFG on an interval, both) and the S-curve's 2
    for label in ("sampling 7 sets: 100%", "S-curve sampling: 100%"):
        assert label in err, err
    # again into its own folder (no --force needed; the runs are reused) without bars
    code, err = run_on_terminal("demo", "--fast", "--out", out, "--no-progress", cwd=tmp_path)
    assert code == 0, err
    assert "%|" not in err and "sampling" not in err, err


@pytest.mark.e2e
def test_guidance_bench_draws_its_bars_on_a_terminal_and_none_with_no_progress(tmp_path):
    out = str(tmp_path / "bench")
    code, err = run_on_terminal("guidance-bench", "--out", out, cwd=tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert "300/300" in err, err  # the training bars (the demo's --fast sizes)
    for name in DATASETS:  # one bar over each dataset's sample sets, filled to the end
        assert re.search(rf"{re.escape(name)}: sampling \d+ sets: 100%", err), err
    code, err = run_on_terminal("guidance-bench", "--out", out, "--no-progress", cwd=tmp_path)
    assert code == 0, err
    assert "%|" not in err and "sampling" not in err, err
