"""Progress bars: sample, eval and likelihood count their work with an ETA (on a terminal, off with
--no-progress); train's bar moves from step 1."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
import torch

from diffguide.cli.progress import likelihood_callback, progress_bar, sampling_callback
from diffguide.grids import make_sigmas
from diffguide.mixtures import tree_mixture
from diffguide.samplers.generation import generate


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (bars are drawn on terminals only)."""

    def isatty(self) -> bool:
        return True


def test_sampling_bar_counts_every_sample_step_by_step():
    """10 samples in batches of 4 with 5 steps: the bar rises at each of the 3 x 5 steps (never
    backwards), by a fifth of the batch each step, and ends at 10/10 with an ETA field."""
    sigmas = make_sigmas("karras", 5, sigma_min=0.002, sigma_max=80.0)
    if sigmas[-1] > 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    seen, screen = [], Terminal()
    with progress_bar(10, "sampling", "samples", file=screen) as bar:
        callback = sampling_callback(bar, len(sigmas) - 1, then=lambda info: seen.append(bar.n))
        generate(tree_mixture(), 10, (2,), sigmas=sigmas, sampler="euler", batch_size=4, callback=callback)
    expected = [4 * (i + 1) / 5 for i in range(5)] + [4 + 4 * (i + 1) / 5 for i in range(5)]
    expected += [8 + 2 * (i + 1) / 5 for i in range(5)]
    assert seen == pytest.approx(expected)
    text = screen.getvalue()
    assert "sampling: 100%" in text and "10/10 samples" in text and "<" in text  # elapsed<remaining


def test_no_bar_when_disabled_or_not_a_terminal():
    for enabled, stream in [(False, Terminal()), (True, io.StringIO())]:
        with progress_bar(3, "sampling", "samples", enabled=enabled, file=stream) as bar:
            bar.update(3)
        assert stream.getvalue() == ""


def test_likelihood_bar_follows_log_sigma_and_the_points_held_out():
    """Each batch's share moves with log sigma from sigma_min to sigma_max; the total follows the
    number of points actually used (fewer held-out images than asked for)."""
    with progress_bar(100, "likelihood", "points", file=Terminal()) as bar:
        callback = likelihood_callback(bar)
        where = {"start": 0, "size": 40, "n": 80, "sigma_min": 0.01, "sigma_max": 100.0}
        callback({"sigma": 1.0, **where})  # half way in log sigma
        assert bar.total == 80 and bar.n == pytest.approx(20)
        callback({"sigma": 0.5, **where})  # an RK stage behind: the bar does not go back
        assert bar.n == pytest.approx(20)
        callback({"sigma": 100.0, **where, "start": 40})
        assert bar.n == pytest.approx(80)


def run_on_terminal(*args: str, cwd) -> tuple[int, str]:
    """`python -m diffguide ARGS` with stderr on a pseudo-terminal (as in a shell); (exit code, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffguide", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=slave
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize(
    ("command", "label"),
    [
        (
            ["sample", "{RUN}", "--n", "300", "--batch-size", "100", "--out", "x.npz", "--no-metrics"],
            "sampling",
        ),
        (["likelihood", "{RUN}", "--n", "20", "--batch-size", "10"], "likelihood"),
    ],
)
def test_commands_draw_a_bar_on_a_terminal_and_none_with_no_progress(cli_run, tmp_path, command, label):
    argv = [a.replace("{RUN}", str(cli_run)) for a in command]
    code, err = run_on_terminal(*argv, cwd=tmp_path)
    assert code == 0, err
    assert f"{label}: 100%" in err and "[" in err and "<" in err, err
    assert "Traceback" not in err
    code, err = run_on_terminal(*argv, "--no-progress", cwd=tmp_path)
    assert code == 0, err
    assert f"{label}:" not in err and "%|" not in err, err


def test_train_bar_moves_from_step_1(tmp_path, monkeypatch, capsys):
    """The bar advances every step, not only at the log_every steps."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import logs, train

    positions = []
    advance = logs.RunLogger.advance

    def record(self, step):
        advance(self, step)
        positions.append(self.bar.n)

    monkeypatch.setattr(logs.RunLogger, "advance", record)
    cfg = apply_overrides(load_preset("tiny"), ["train.steps=6", "train.log_every=5", "train.ckpt_every=6"])
    train(cfg, tmp_path / "run", progress=True)
    assert positions == [1, 2, 3, 4, 5, 6]
    assert "6/6" in capsys.readouterr().err


def test_tune_grid_draws_a_bar_on_a_terminal_and_none_with_no_progress(cli_run, tmp_path):
    """tune-grid counts denoiser evaluations against an upper bound, and ends at 100% of those done."""
    argv = [
        "tune-grid",
        str(cli_run),
        "--sampler",
        "euler",
        "--nfe",
        "4",
        "--method",
        "gits",
        "--samples",
        "8",
    ]
    code, err = run_on_terminal(*argv, "--out", "a.json", cwd=tmp_path)
    assert code == 0, err
    assert "tuning: 100%" in err and "evaluations [" in err and "<" in err, err
    assert "Traceback" not in err
    code, err = run_on_terminal(*argv, "--out", "b.json", "--no-progress", cwd=tmp_path)
    assert code == 0, err
    assert "tuning:" not in err and "%|" not in err, err


def test_tune_grid_reports_every_evaluation_within_its_upper_bound(cli_run):
    """tune_grid's progress: (done, total) after each denoiser evaluation, done counting 1, 2, 3, ...
    (checked against a counting denoiser), never above the announced total, which is an upper bound."""
    from diffguide.models.runs import load_run
    from diffguide.samplers.tuning import tune_grid

    run = load_run(cli_run)
    calls = []

    def counting(x, sigma, cond=None):
        calls.append(len(x))
        return run.denoiser(x, sigma, cond)

    for method in ("gits", "direct"):
        calls.clear()
        seen = []
        tune_grid(counting, (2,), "euler", 3, samples=4, method=method, max_evals=20, fine_levels=12,
                  substeps=2, progress=lambda done, total, seen=seen: seen.append((done, total)))  # fmt: skip
        assert [done for done, _ in seen] == list(range(1, len(calls) + 1))
        assert all(done <= total for done, total in seen)
        assert seen[0][1] >= len(calls), (method, seen[0][1], len(calls))  # the first total bounds them all


@pytest.mark.e2e
def test_train_classifier_draws_a_bar_on_a_terminal_and_none_with_no_progress(tmp_path):
    argv = ["train-classifier", "--data", "digits", "--steps", "20", "--width", "8", "--feature-dim", "8"]
    code, err = run_on_terminal(*argv, "--out", "a", cwd=tmp_path)
    assert code == 0, err
    assert "training classifier: 100%" in err and "20/20 steps [" in err, err
    assert "Traceback" not in err
    code, err = run_on_terminal(*argv, "--out", "b", "--no-progress", cwd=tmp_path)
    assert code == 0, err
    assert "training classifier:" not in err and "%|" not in err, err
