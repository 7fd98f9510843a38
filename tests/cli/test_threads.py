"""--threads N (train, sample, eval, likelihood, tune-grid): torch's intra-op thread count, applied, recorded in a
run's metrics.jsonl with the throughput, and refused below 1."""

from __future__ import annotations

import json

import pytest
import torch

from diffguide.cli import build_parser
from diffguide.cli.common import apply_threads
from tests.helpers import run_cli

COMMANDS = {  # each command's smallest argument list (nothing is run: only parsed and applied)
    "train": ["train", "--preset", "tiny"],
    "sample": ["sample", "RUN", "--out", "x.npz"],
    "eval": ["eval", "RUN"],
    "likelihood": ["likelihood", "RUN"],
    "tune-grid": ["tune-grid", "RUN", "--sampler", "euler", "--nfe", "4"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_threads_is_applied_for_each_command(command):
    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2
    try:
        apply_threads(build_parser().parse_args([*COMMANDS[command], "--threads", str(wanted)]))
        assert torch.get_num_threads() == wanted
        apply_threads(build_parser().parse_args(COMMANDS[command]))  # not given: left as it is
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_train_records_the_thread_count_with_the_throughput(tmp_path):
    """The subprocess starts with OMP_NUM_THREADS=1 (run_cli), so 3 in every record is --threads'."""
    result = run_cli(
        "train", "--preset", "tiny", "--set", "train.steps=20", "--set", "train.log_every=10",
        "--threads", "3", "--out", str(tmp_path), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert all(r["threads"] == 3 and r["samples_per_s"] > 0 and r["steps_per_s"] > 0 for r in records)


@pytest.mark.parametrize(("command", "value"), [*((c, "0") for c in sorted(COMMANDS)), ("train", "-2")])
def test_threads_below_one_exits_2_naming_the_value(command, value, tmp_path):
    """Refused before anything runs (a run folder that does not exist is not even looked at)."""
    args = [a if a != "x.npz" else str(tmp_path / "x.npz") for a in COMMANDS[command]]
    if command == "train":
        args += ["--out", str(tmp_path)]
    result = run_cli(*args, "--threads", value)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"diffguide {command}: error: --threads must be an integer >= 1, got {value}"
    )
    assert not any(tmp_path.iterdir())
