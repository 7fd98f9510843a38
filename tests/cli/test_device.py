"""--device on the commands that run a network (sample, eval, likelihood, tune-grid, dashboard), through
the real executable: a device this machine lacks is one line naming --device before anything is written;
--device cpu is the default's computation on a CPU-only machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import file_digests, one_line_exit_2, run_cli

NO_CUDA = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"


def command_line(command: str, run: Path, out: Path) -> list[str]:
    """A command line of `command` on the tiny 2D run whose output would be `out`."""
    return {
        "sample": ["sample", str(run), "--n", "10", "--out", str(out), "--force"],
        "eval": ["eval", str(run), "--out", str(out), "--force"],
        "likelihood": ["likelihood", str(run), "--n", "10", "--out", str(out), "--force"],
        "tune-grid": [
            "tune-grid",
            str(run),
            "--sampler",
            "euler",
            "--nfe",
            "4",
            "--out",
            str(out),
            "--force",
        ],
    }[command]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["sample", "eval", "likelihood", "tune-grid"])
@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cuda", f"--device 'cuda' but {NO_CUDA}"),
        ("cuda:3", f"--device 'cuda:3' but {NO_CUDA}"),
        ("mps", "--device 'mps' but MPS (Apple GPUs) is not available here; available: cpu"),
        ("foo", "unknown --device 'foo'; choices: auto, cpu, cuda, cuda:N or mps"),
        ("cude", "unknown --device 'cude'; did you mean 'cuda'"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line_and_changes_nothing(
    cli_run, tmp_path, command, device, expected
):
    suffix = ".npz" if command == "sample" else ".json"
    out = tmp_path / f"earlier{suffix}"
    out.write_bytes(b"an earlier output, kept")  # even with --force: the device is checked first
    before_run, before_out = file_digests(cli_run), file_digests(tmp_path)
    line = one_line_exit_2(run_cli(*command_line(command, cli_run, out), "--device", device), command)
    assert expected in line
    if device in ("cuda", "cuda:3", "mps"):
        assert "available: cpu" in line and "use --device auto (or cpu)" in line
    assert file_digests(cli_run) == before_run and file_digests(tmp_path) == before_out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_out_is_not_created_when_the_device_is_refused(cli_run, tmp_path):
    out = tmp_path / "new" / "x.npz"
    one_line_exit_2(
        run_cli("sample", str(cli_run), "--n", "10", "--out", str(out), "--device", "cuda"), "sample"
    )
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_dashboard_refuses_a_device_this_machine_lacks_before_making_the_runs_folder(tmp_path):
    runs = tmp_path / "runs"
    result = run_cli("dashboard", "--runs", str(runs), "--port", "0", "--device", "cuda", timeout=60)
    assert f"--device 'cuda' but {NO_CUDA}" in one_line_exit_2(result, "dashboard")
    assert not runs.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto is the GPU there")
def test_device_cpu_samples_exactly_what_the_default_does(cli_run, tmp_path):
    arrays = {}
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        out = tmp_path / f"{name}.npz"
        args = ("sample", str(cli_run), "--n", "200", "--out", str(out), "--no-progress", "--no-metrics")
        result = run_cli(*args, *extra)
        assert result.returncode == 0, result.stderr
        with np.load(out) as f:
            arrays[name] = f["samples"]
    assert arrays["default"].dtype == arrays["cpu"].dtype == np.float32
    assert arrays["default"].tobytes() == arrays["cpu"].tobytes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto is the GPU there")
def test_likelihood_device_cpu_gives_the_default_numbers(cli_run, tmp_path):
    results = []
    for extra in ([], ["--device", "cpu"]):
        out = tmp_path / f"l{len(results)}.json"
        args = ("likelihood", str(cli_run), "--n", "10", "--out", str(out), "--no-progress")
        assert run_cli(*args, *extra).returncode == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["nats_per_dim"] == results[1]["nats_per_dim"]
    assert results[0]["nfe"] == results[1]["nfe"]


def test_guides_load_on_the_device_of_the_run(cli_run):
    """build_guided's default loaders put a guide run where the main run is ("meta": a device every
    torch has, whose tensors hold no data; the guide would otherwise be on the CPU)."""
    from diffguide.guidance.spec import GuidanceSpec, model_device, model_parts
    from diffguide.models.runs import load_run

    run = load_run(cli_run, device="meta")
    assert model_device(run.denoiser) == torch.device("meta")
    guide = model_parts(run).amateur(GuidanceSpec(kind="auto", w=2.0, guide=str(cli_run)))
    assert model_device(guide) == torch.device("meta")
    assert model_device(load_run(cli_run).denoiser) == torch.device("cpu")
