"""The library refuses what the command line refuses: sigma grids, sampler options, sample counts,
class labels, k of precision/recall and the likelihood solver's numbers (issue 15, Python API)."""

from __future__ import annotations

import math

import pytest
import torch

from diffguide.errors import ConfigError
from diffguide.grids import karras_sigmas
from diffguide.metrics.images import precision_recall
from diffguide.metrics.likelihood import log_likelihood
from diffguide.samplers import (
    SAMPLERS,
    generate,
    generation,
    sample_ddim,
    sample_dpmpp_2m_sde,
    sample_heun,
    sample_pc,
)
from tests.helpers import time_limit

F64 = torch.float64
GRID = karras_sigmas(4, 0.002, 80.0)  # 4 levels then 0


@pytest.fixture(scope="module")
def x():
    return torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * 80


BAD_GRIDS = {
    # ascending: Heun returned NaN
    "ascending": (GRID.flip(0), r"strictly decreasing, got sigmas\[0\] = 0.0 then sigmas\[1\] = 0.002"),
    "repeated": (torch.tensor([80.0, 1.0, 1.0, 0.0], dtype=F64), r"sigmas\[1\] = 1.0 then sigmas\[2\] = 1.0"),
    # NaN: UniPC raised a LinAlgError
    "nan": (torch.tensor([80.0, math.nan, 1.0, 0.0], dtype=F64), r"finite, got sigmas\[1\] = nan"),
    "inf": (torch.tensor([math.inf, 1.0, 0.0], dtype=F64), r"finite, got sigmas\[0\] = inf"),
    "negative": (torch.tensor([1.0, -1.0], dtype=F64), r"must be >= 0, got sigmas\[1\] = -1.0"),
    "one-level": (torch.tensor([80.0], dtype=F64), r"1-D with at least 2 entries, got shape \(1,\)"),
    "2-d": (GRID[None], r"1-D with at least 2 entries, got shape \(1, 5\)"),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_every_sampler_refuses_a_bad_grid_naming_the_value(tree, x, name, case):
    sigmas, message = BAD_GRIDS[case]
    calls = []

    def denoiser(x, sigma, cond=None):  # counts calls: the grid is refused before any step
        calls.append(1)
        return tree(x, sigma, cond)

    with pytest.raises(ConfigError, match=message):
        SAMPLERS[name](denoiser, x, sigmas)
    assert not calls


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_grid_ending_above_zero_stays_allowed_in_the_samplers(tree, x, name):
    """One step between two noise levels, or a grid ending at sigma_min (diffusers parity), is a
    documented use of the sampler functions: they return x at the last level. A list works too."""
    out = SAMPLERS[name](tree, x, GRID[:-1].tolist(), generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_generate_requires_the_grid_to_end_in_zero(tree):
    with pytest.raises(ConfigError, match=r"must end in 0 .*got a last sigma of 0.002.*append a 0"):
        generate(tree, 4, (2,), sigmas=GRID[:-1], sampler="euler")
    assert generate(tree, 4, (2,), sigmas=GRID, sampler="euler", dtype=F64).shape == (4, 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, x: sample_ddim(d, x, GRID, eta=-1), "option eta of sampler 'ddim' must be a finite number >= 0, got -1"),
        (lambda d, x: sample_ddim(d, x, GRID, eta=math.nan), "option eta of sampler 'ddim' .* got nan"),
        (lambda d, x: sample_dpmpp_2m_sde(d, x, GRID, eta=-0.5), "option eta of sampler 'dpmpp-2m-sde' .* got -0.5"),
        (lambda d, x: sample_heun(d, x, GRID, s_churn=math.inf), "option s_churn of sampler 'heun' .* got inf"),
        (lambda d, x: sample_pc(d, x, GRID, snr=-1.0), "option snr of sampler 'pc' .* got -1.0"),
        (lambda d, x: sample_pc(d, x, GRID, corrector_steps=-1), "corrector_steps of sampler 'pc' must be an integer >= 0"),
    ],
    ids=["ddim-eta-negative", "ddim-eta-nan", "dpmpp-2m-sde-eta", "heun-churn-inf", "pc-snr", "pc-corrector-steps"],
)  # fmt: skip
def test_sampler_options_out_of_range_are_refused(tree, x, call, message):
    with pytest.raises(ConfigError, match=message):
        call(tree, x)


def test_sample_count_is_bounded_by_memory(monkeypatch):
    with pytest.raises(ConfigError, match="number of samples must be >= 1, got 0"):
        generation.check_sample_count(0, (2,))
    monkeypatch.setattr(generation, "physical_memory", lambda: 1600)
    generation.check_sample_count(100, (2,))  # 100 samples * 8 bytes * 2 copies = 1600 bytes: fits
    with pytest.raises(ConfigError, match=r"this machine has 1.6 KiB of memory; ask for at most 100 "):
        generation.check_sample_count(101, (2,))
    with pytest.raises(ConfigError, match=r"ask for at most 50 "):  # float64: twice the bytes
        generation.check_sample_count(51, (2,), torch.float64)
    monkeypatch.setattr(generation, "physical_memory", lambda: None)  # unknown: no bound
    generation.check_sample_count(10**12, (2,))


@pytest.fixture(scope="module")
def run(cli_run):
    from diffguide.models.runs import load_run

    return load_run(cli_run)


def test_sample_run_checks_steps_and_class_labels(run):
    from diffguide.samplers import sample_run

    with pytest.raises(ConfigError, match="number of steps must be >= 1, got 0"):  # was: the run's 8
        sample_run(run, 4, steps=0)
    with pytest.raises(ConfigError, match=r"class label 5 is out of range for run 'tiny': classes are 0..1"):
        sample_run(run, 4, cond=5)  # was: IndexError
    with pytest.raises(ConfigError, match="class label -1 is out of range"):
        sample_run(run, 4, cond=torch.tensor([0, 1, -1, 0]))
    with pytest.raises(ConfigError, match="class labels must be integers, got 0.5"):
        sample_run(run, 4, cond=0.5)
    # every valid label, and the null label 2 (the unconditional output of a CFG-trained net)
    assert sample_run(run, 3, cond=torch.tensor([0, 1, 2]), steps=2).shape == (3, 2)


def test_precision_recall_needs_at_least_one_neighbour():
    real = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="precision/recall needs k >= 1 neighbours .*got k=0"):
        precision_recall(real, real, k=0)  # was: precision 0.0
    assert precision_recall(real, real, k=1) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rtol": math.nan}, "rtol .* must be a number in \\(0, 1\\), got nan"),  # hung
        ({"atol": -1.0}, "atol .* must be a finite number > 0, got -1.0"),
        ({"sigma_max": math.inf}, "sigma_max must be a finite number > 0, got inf"),  # hung
        ({"sigma_min": 0.0}, "sigma_min must be a finite number > 0, got 0.0"),
        ({"method": "foo"}, "unknown solve_ivp method 'foo'"),
    ],
    ids=["rtol-nan", "atol-negative", "sigma-max-inf", "sigma-min-0", "method"],
)
def test_likelihood_solver_numbers_are_refused_before_solving(tree, options, message):
    x0 = torch.zeros(2, 2, dtype=F64)
    with time_limit(20), pytest.raises(ConfigError, match=message):
        log_likelihood(tree, x0, **options)


def test_evaluate_images_checks_steps_k_and_n_before_loading_anything(run, tmp_path):
    from diffguide.metrics.images import evaluate_images

    missing = tmp_path / "no-classifier"  # never reached: each check comes first
    with pytest.raises(ConfigError, match="number of steps must be >= 1, got 0"):  # was: the run's steps
        evaluate_images(run, run.denoiser, missing, n=4, steps=0)
    with pytest.raises(ConfigError, match="precision/recall needs k >= 1 neighbours"):
        evaluate_images(run, run.denoiser, missing, n=4, k=0)
    with pytest.raises(ConfigError, match="either steps or sigmas"):
        evaluate_images(run, run.denoiser, missing, n=4, steps=3, sigmas=[1.0, 0.5, 0.0])
    with pytest.raises(ConfigError, match="number of samples 10000000000000 is too large"):
        evaluate_images(run, run.denoiser, missing, n=10**13)
