"""Grids tuned to the model (diffguide.samplers.tuning, grid files, `tune-grid`, `sample --grid FILE`).

The answers come from a single Gaussian N(mu, s^2 I), whose probability-flow ODE is solved in closed
form: x(sigma) = mu + (x(sigma0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma0^2).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffguide.errors import ConfigError
from diffguide.grids import karras_sigmas
from diffguide.mixtures import GaussianMixture
from diffguide.noise import PerSampleNoise
from diffguide.samplers import get_sampler
from diffguide.samplers.grid_file import read_grid_file, write_grid_file
from diffguide.samplers.tuning import cheapest_path, tune_grid

MU, S, SIGMA_MAX, SIGMA_MIN = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5, 80.0, 0.002
FAST = dict(samples=32, fine_levels=40, substeps=4, max_evals=300)  # small, but the same algorithm


@pytest.fixture(scope="module")
def gaussian():
    return GaussianMixture([1.0], MU[None], (S**2 * torch.eye(2, dtype=torch.float64))[None])


def exact_end(x: torch.Tensor, sigma0: float = SIGMA_MAX) -> torch.Tensor:
    """The ODE solution at sigma = 0 from x at sigma0 (closed form for a single Gaussian)."""
    return MU + (x - MU) * S / math.sqrt(S**2 + sigma0**2)


def closed_form_error(gaussian, sampler: str, sigmas: torch.Tensor, n: int = 500) -> float:
    """RMS end-point error against the closed form, on noise the tuner never saw (seed 99)."""
    x = PerSampleNoise.from_seed(99, n).randn((2,), torch.float64) * SIGMA_MAX
    out = get_sampler(sampler)(gaussian, x, sigmas)
    return float((out - exact_end(x)).pow(2).sum(1).mean().sqrt())


@pytest.mark.parametrize("sampler", ["euler", "heun", "ipndm"])
def test_tuned_grid_is_no_worse_than_karras_on_a_single_gaussian(gaussian, sampler):
    for nfe in (2, 4, 8):
        tuned = tune_grid(gaussian, (2,), sampler, nfe, **FAST)
        karras = closed_form_error(gaussian, sampler, karras_sigmas(tuned.steps, SIGMA_MIN, SIGMA_MAX))
        ours = closed_form_error(gaussian, sampler, tuned.sigmas)
        assert ours <= karras * (1 + 1e-9), (sampler, nfe, ours, karras)
        assert tuned.error_after <= tuned.error_before
        assert (
            float(tuned.sigmas[0]) == pytest.approx(SIGMA_MAX, rel=1e-12)
            and tuned.sigmas[-1] == 0
            and (tuned.sigmas.diff() < 0).all()
        )
        assert tuned.sigmas[-2] >= SIGMA_MIN * (1 - 1e-9)


def euler_shrink(sigmas) -> float:
    """How much Euler on `sigmas` (ending in 0) scales x - mu for N(mu, s^2): the product over steps of
    sigma'/sigma + (1 - sigma'/sigma) s^2 / (s^2 + sigma^2) (Euler's step with the exact denoiser)."""
    out = 1.0
    for a, b in zip(sigmas, sigmas[1:]):
        out *= b / a + (1 - b / a) * S**2 / (S**2 + a**2)
    return out


def euler_optimum(steps: int) -> tuple[list[float], float]:
    """The inner levels minimising |shrink - R| / R, R = s / sqrt(s^2 + 80^2) the exact flow's factor,
    by Nelder-Mead on the closed form from three starts (independent of the tuner)."""
    from scipy.optimize import minimize

    exact = S / math.sqrt(S**2 + SIGMA_MAX**2)

    def relative_error(logs):
        return abs(euler_shrink([SIGMA_MAX, *sorted(math.exp(v) for v in logs)[::-1], 0.0]) - exact) / exact

    options = dict(xatol=1e-9, fatol=1e-13, maxiter=20_000)
    starts = [
        [math.log(v) + shift for v in torch.logspace(1, -1.3, steps - 1).tolist()] for shift in (-1, 0, 1)
    ]
    best = min(
        (minimize(relative_error, x0, method="Nelder-Mead", options=options) for x0 in starts),
        key=lambda r: r.fun,
    )
    return sorted((math.exp(v) for v in best.x), reverse=True), float(best.fun)


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_tuner_recovers_the_known_optimum_of_euler_on_a_gaussian(gaussian, steps):
    """Every sample's Euler error on N(mu, s^2) is |shrink(grid) - R| |x - mu|, so the best grid does not
    depend on the noise and follows from the closed form; with 2 steps its middle level is close to s."""
    levels, optimum = euler_optimum(steps)
    tuned = tune_grid(gaussian, (2,), "euler", steps, **FAST)
    assert tuned.chosen != "karras"
    assert tuned.sigmas[1:-1].tolist() == pytest.approx(levels, rel=0.03)
    exact = S / math.sqrt(S**2 + SIGMA_MAX**2)
    assert abs(euler_shrink(tuned.sigmas.tolist()) - exact) / exact == pytest.approx(optimum, rel=0.01)
    karras = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX).tolist()
    assert optimum < 0.9 * abs(euler_shrink(karras) - exact) / exact  # a tuner that does nothing fails
    if steps == 2:
        assert levels[0] == pytest.approx(S, rel=0.05)


@pytest.mark.parametrize("steps", [4, 12])
def test_shape_search_recovers_a_grid_of_its_family(steps):
    """A log-linear grid down to 0.05 is in the shape family (equal step sizes in log sigma, the smallest
    level inside the range): Nelder-Mead from a Karras grid finds it when the objective is the log
    distance to it (in rounds restarted at the previous end)."""
    from diffguide.grids import loglinear_sigmas
    from diffguide.samplers.tuning import shape_search

    target = loglinear_sigmas(steps, 0.05, SIGMA_MAX)

    def distance(sigmas):
        return float((sigmas[:-1].log() - target[:-1].log()).pow(2).sum().sqrt())

    start = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    found, value = shape_search(distance, start, SIGMA_MIN, max_evals=600, rounds=4)
    assert distance(start) > 1.0 and value < 1e-4
    assert found[-1] == 0 and found[0] == SIGMA_MAX and bool((found[1:] < found[:-1]).all())
    assert found.tolist() == pytest.approx(target.tolist(), rel=3e-3)


def test_cheapest_path_is_the_brute_force_minimum():
    generator = torch.Generator().manual_seed(3)
    m = 7
    cost = torch.rand(m, m, generator=generator, dtype=torch.float64).triu(1)
    cost[cost == 0] = math.inf
    for steps in range(1, m):
        paths = [(0, *inner, m - 1) for inner in itertools.combinations(range(1, m - 1), steps - 1)]
        brute = min(sum(float(cost[a, b]) for a, b in zip(p, p[1:])) for p in paths)
        path = cheapest_path(cost, steps)
        assert len(path) == steps + 1 and path[0] == 0 and path[-1] == m - 1
        assert sum(float(cost[a, b]) for a, b in zip(path, path[1:])) == pytest.approx(brute)


def test_tuning_is_deterministic_for_a_seed(gaussian):
    a = tune_grid(gaussian, (2,), "dpmpp-2m", 4, seed=5, **FAST)
    b = tune_grid(gaussian, (2,), "dpmpp-2m", 4, seed=5, **FAST)
    assert torch.equal(a.sigmas, b.sigmas) and a.errors == b.errors


def test_per_sample_labels_pair_each_draw_with_its_class():
    """Classes in turn (as `eval` samples them): class k is one Gaussian at mean m_k, so the ODE end
    point of each draw is the closed form for its own class; the tuner's recorded Karras error on its
    validation draws must be the closed-form error of those draws with their labels."""
    means = torch.tensor([[1.0, -0.5], [-2.0, 1.5]], dtype=torch.float64)
    two = GaussianMixture(
        [0.5, 0.5], means, (S**2 * torch.eye(2, dtype=torch.float64)).expand(2, 2, 2), [0, 1]
    )
    samples, seed = 16, 3
    labels = torch.arange(samples) % 2
    tuned = tune_grid(
        two, (2,), "heun", 7, cond=labels, method="gits", seed=seed, **{**FAST, "samples": samples}
    )
    x = PerSampleNoise.from_seed(seed, samples, start=samples).randn((2,), torch.float64) * SIGMA_MAX
    m = means[labels]
    exact = m + (x - m) * S / math.sqrt(S**2 + SIGMA_MAX**2)
    out = get_sampler("heun")(two, x, tuned.grids["karras"], cond=labels)
    assert tuned.error_before == pytest.approx(float((out - exact).pow(2).sum(1).mean().sqrt()), rel=1e-3)
    same = tune_grid(two, (2,), "heun", 7, cond=torch.ones(32, dtype=torch.long), method="gits", **FAST)
    one = tune_grid(two, (2,), "heun", 7, cond=1, method="gits", **FAST)
    assert torch.equal(same.sigmas, one.sigmas) and same.errors == one.errors
    with pytest.raises(ConfigError, match="one class or 32 integer labels"):
        tune_grid(two, (2,), "heun", 7, cond=labels, **FAST)


@pytest.mark.parametrize(
    ("sampler", "nfe", "message"),
    [
        ("heun", 0, "must be an integer >= 1, got 0"),
        ("huen", 4, "unknown sampler 'huen'; did you mean 'heun'"),
        ("ddpm", 4, "sampler 'ddpm' is stochastic"),
    ],
)
def test_bad_tuning_arguments(gaussian, sampler, nfe, message):
    with pytest.raises(ConfigError, match=message):
        tune_grid(gaussian, (2,), sampler, nfe)


def test_grid_file_round_trip_and_bad_files(tmp_path):
    path = write_grid_file(
        tmp_path / "g.json", torch.tensor([80.0, 1.5, 0.1, 0.0], dtype=torch.float64), sampler="euler", nfe=3
    )
    grid = read_grid_file(path)
    assert grid.sigmas.tolist() == [80.0, 1.5, 0.1, 0.0] and grid.sampler == "euler" and grid.nfe == 3
    for sigmas, message in [
        ([80.0, 90.0, 0.0], "strictly descending.*sigma 1 = 90 follows sigma 0 = 80"),
        ([80.0, float("nan"), 0.0], "sigma 1 is nan; every sigma must be finite"),
        ([float("inf"), 1.0, 0.0], "sigma 0 is inf"),
        ([80.0, 1.0], "the last sigma must be 0"),
        ([80.0], "at least 2 sigmas"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps({"sigmas": sigmas}))
        with pytest.raises(ConfigError, match=message):
            read_grid_file(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------
# the real executable


def diffguide(*args: str, show_warnings: bool = False) -> subprocess.CompletedProcess:
    """The installed `diffguide` script next to this Python (else `python -m diffguide`), in a subprocess;
    Python's warnings are off unless show_warnings (ours are shown as one `warning:` line each)."""
    script = Path(sys.executable).parent / "diffguide"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "diffguide"]
    env = {**os.environ, "PYTHONWARNINGS": "default" if show_warnings else "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_bad_input_through_the_executable_exits_2_and_changes_nothing(cli_run, tmp_path):
    keep = tmp_path / "existing.json"
    keep.write_text('{"keep": true}\n')
    tune = ["tune-grid", str(cli_run), "--out", str(keep)]
    assert_refused(diffguide(*tune, "--sampler", "heun", "--nfe", "0"), "got 0")
    assert_refused(diffguide(*tune, "--sampler", "huen", "--nfe", "4"), "unknown sampler 'huen'")
    assert_refused(diffguide(*tune, "--sampler", "ddpm", "--nfe", "4"), "stochastic")
    assert_refused(
        diffguide(*tune, "--sampler", "euler", "--nfe", "4", "--max-evals", "0"), "--max-evals must be"
    )
    samples = tmp_path / "samples.npz"
    samples.write_bytes(b"old samples")
    for name, sigmas, message in [
        ("ascending.json", [0.5, 2.0, 80.0, 0.0], "strictly descending"),
        ("nan.json", [80.0, float("nan"), 0.0], "must be finite"),
        ("inf.json", [float("inf"), 1.0, 0.0], "must be finite"),
    ]:
        (tmp_path / name).write_text(json.dumps({"sigmas": sigmas}))
        # --force: the --out check would refuse first; the grid must be refused before anything is written
        result = diffguide(
            "sample", str(cli_run), "--grid", str(tmp_path / name), "--out", str(samples), "--force"
        )
        assert_refused(result, message)
        assert name in result.stderr
    # grid files that do not fit: the run's process (EDM, sigma 0.002..80), their own sampler and NFE
    for name, record, message in [
        (
            "wide.json",
            {"sigmas": [120.0, 1.0, 0.0]},
            "spans sigma 1..120, outside the model's noise process (edm)",
        ),
        ("low.json", {"sigmas": [80.0, 1e-4, 0.0]}, "range 0.002..80"),
        (
            "nfe.json",
            {"sigmas": [80.0, 1.0, 0.1, 0.0], "sampler": "heun", "nfe": 8},
            "says nfe 8 for sampler 'heun', which takes 4 steps, but holds 3 steps",
        ),
        ("unknown.json", {"sigmas": [80.0, 1.0, 0.0], "sampler": "huen", "nfe": 2}, "sampler 'huen'"),
    ]:
        (tmp_path / name).write_text(json.dumps(record))
        result = diffguide(
            "sample", str(cli_run), "--grid", str(tmp_path / name), "--out", str(samples), "--force"
        )
        assert_refused(result, message)
        assert name in result.stderr
    assert keep.read_text() == '{"keep": true}\n' and samples.read_bytes() == b"old samples"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["existing.json", "samples.npz", "ascending.json", "nan.json", "inf.json"]
        + ["wide.json", "low.json", "nfe.json", "unknown.json"]
    )


def test_tune_grid_max_evals_is_the_librarys_search_budget(cli_run, tmp_path):
    """--max-evals N = tune_grid(max_evals=N) on the same run (same grid, float32 as the CLI), recorded
    in the file; a smaller budget runs fewer sampler runs than the default (the progress total)."""
    from diffguide.models.runs import load_run
    from diffguide.samplers.tuning import evaluation_budget

    out = tmp_path / "grid.json"
    args = [
        "tune-grid",
        str(cli_run),
        "--sampler",
        "euler",
        "--nfe",
        "4",
        "--samples",
        "16",
        "--max-evals",
        "20",
    ]
    result = diffguide(*args, "--method", "direct", "--out", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    run = load_run(cli_run)
    s = run.config.sample
    expected = tune_grid(
        run.denoiser, tuple(run.dataset.shape), "euler", 4, sigma_min=s.sigma_min or run.process.sigma_min,
        sigma_max=s.sigma_max or run.process.sigma_max, rho=s.rho, method="direct", samples=16,
        max_evals=20, dtype=torch.float32,
    )  # fmt: skip
    assert record["max_evals"] == 20 and record["sigmas"] == pytest.approx(
        expected.sigmas.tolist(), rel=1e-12
    )
    assert evaluation_budget("direct", 4, 4, 97, 8, 20) < evaluation_budget("direct", 4, 4, 97, 8, 300)


def test_tune_grid_then_sample_with_the_file(cli_run, tmp_path):
    out = tmp_path / "grid.json"
    result = diffguide(
        "tune-grid", str(cli_run), "--sampler", "euler", "--nfe", "4", "--samples", "16", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["sampler"] == "euler" and record["nfe"] == 4 and len(record["sigmas"]) == 5
    assert record["process"] == "edm"
    assert record["error_after"] <= record["error_before"] and len(record["checkpoint_sha256"]) == 64
    samples = tmp_path / "s.npz"
    result = diffguide(
        "sample", str(cli_run), "--grid", str(out), "--n", "20", "--out", str(samples), "--no-metrics"
    )
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    # the file's sigmas and sampler were used: the same as the Python API on that grid
    from diffguide.models.runs import load_run
    from diffguide.samplers import generate

    run = load_run(cli_run)
    grid = read_grid_file(out)
    expected = generate(run.denoiser, 20, run.dataset.shape, sigmas=grid.sigmas, sampler="euler", seed=0)
    assert torch.allclose(torch.from_numpy(np.load(samples)["samples"]), expected, atol=1e-5)
    on_karras = generate(
        run.denoiser, 20, run.dataset.shape, sigmas=karras_sigmas(4), sampler="euler", seed=0
    )
    assert not torch.allclose(on_karras, expected, atol=1e-3)
    result = diffguide(
        "sample",
        str(cli_run),
        "--grid",
        str(out),
        "--sampler",
        "heun",
        "--n",
        "20",
        "--out",
        str(samples),
        "--no-metrics",
        show_warnings=True,
    )
    assert result.returncode == 0, result.stderr
    # heun takes 2 evaluations on each step but the last: 7 on the file's 4 steps
    assert "warning: grid.json was tuned for sampler 'euler' (4 evaluations), used with 'heun' (7 " in (
        result.stderr
    )
    result = diffguide("sample", str(cli_run), "--grid", str(out), "--steps", "8", "--out", str(samples))
    assert_refused(result, "fixes the sigmas (4 steps); leave out --steps")
