"""EDM2's power-function EMA and post-hoc EMA (Karras et al. 2024, sec. 3 and appendix C) against closed
forms: the profile's relative std for a given gamma (eq. 3, and the std of the averaging weights our
update actually applies), the EMA our code tracks against the closed-form weighted average of known
weights, the reconstruction of a stored profile (itself) and of one between the stored ones (close to
tracking it directly), and the `posthoc-ema` command's bad inputs through the real executable."""

from __future__ import annotations

import hashlib
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from diffguide.config import apply_overrides, load_preset
from diffguide.errors import CheckpointError, ConfigError
from diffguide.models.runs import load_run
from diffguide.samplers import sample_run
from diffguide.train import train
from diffguide.train.checkpoint import read_checkpoint
from diffguide.train.ema import MAX_EMA_STD, PowerEMA, gamma_to_std, power_beta, std_to_gamma
from diffguide.train.posthoc import (
    check_std,
    combine,
    posthoc_checkpoint,
    posthoc_coefficients,
    posthoc_ema,
    profile_overlap,
)
from diffguide.train.snapshots import list_snapshots, read_snapshots, snapshot_step
from tests.helpers import run_cli

# ---------------------------------------------------------------------------------------------------
# the profile and its std


@pytest.mark.parametrize("gamma", [0.5, 3.0, 6.94, 16.97, 50.0])
def test_std_of_gamma_is_the_papers_closed_form(gamma):
    """sigma_rel^2 = (gamma+1) / ((gamma+2)^2 (gamma+3)) (EDM2 eq. 3), written out here from the
    density (gamma+1) x^gamma on [0, 1]: E[x] = (g+1)/(g+2), E[x^2] = (g+1)/(g+3); and std_to_gamma
    inverts it."""
    mean, second = (gamma + 1) / (gamma + 2), (gamma + 1) / (gamma + 3)
    assert gamma_to_std(gamma) == pytest.approx(math.sqrt(second - mean**2), rel=1e-12)
    assert std_to_gamma(gamma_to_std(gamma)) == pytest.approx(gamma, rel=1e-9)


def test_the_papers_two_profiles():
    """EDM2 sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94."""
    assert std_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert std_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    assert gamma_to_std(0.0) == pytest.approx(MAX_EMA_STD)  # the plain average: uniform on [0, 1]


def averaging_weights(gamma: float, steps: int) -> torch.Tensor:
    """The weight of each step 1..steps in the average after `steps` updates with power_beta's decays:
    (1 - beta_i) prod_{j > i} beta_j, computed with suffix sums of log beta (float64)."""
    i = torch.arange(1, steps + 1, dtype=torch.float64)
    beta = torch.tensor([power_beta(gamma, int(k)) for k in i], dtype=torch.float64)
    log_beta = torch.log(beta.clamp_min(1e-300))
    after = torch.flip(torch.cumsum(torch.flip(log_beta, [0]), 0), [0]) - log_beta  # sum over j > i
    return (1 - beta) * torch.exp(after)


@pytest.mark.parametrize("std", [0.05, 0.10, 0.2])
def test_std_of_the_weights_our_update_applies(std):
    """Over a long run (20000 steps) the weights our decays give the steps have relative std sigma_rel
    (to the 1/T discretisation), and match the profile's density integrated over each step."""
    steps, gamma = 20000, std_to_gamma(std)
    w = averaging_weights(gamma, steps)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    x = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    mean = float((w * x).sum())
    measured = math.sqrt(float((w * (x - mean) ** 2).sum()))
    assert measured == pytest.approx(std, rel=1e-3)
    i = torch.arange(1, steps + 1, dtype=torch.float64)
    assert torch.allclose(w, (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / steps ** (gamma + 1), rtol=1e-9)


def test_profile_overlap_is_the_integral():
    """The closed-form inner product of two profiles against a midpoint-rule integral."""
    (ta, ga), (tb, gb) = (70.0, 6.94), (100.0, 16.97)
    n = 200000
    tau = (torch.arange(n, dtype=torch.float64) + 0.5) * ta / n
    pa = (ga + 1) * tau**ga / ta ** (ga + 1)
    pb = (gb + 1) * tau**gb / tb ** (gb + 1)
    numeric = float((pa * pb).sum() * ta / n)
    assert profile_overlap(ta, ga, tb, gb) == pytest.approx(numeric, rel=1e-6)
    assert profile_overlap(tb, gb, ta, ga) == profile_overlap(ta, ga, tb, gb)


# ---------------------------------------------------------------------------------------------------
# the tracked average


class Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(5))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_power_ema_is_the_closed_form_weighted_average():
    """PowerEMA after T updates with known weights theta_1..theta_T equals
    sum_i (i^(g+1) - (i-1)^(g+1)) / T^(g+1) theta_i for each std; integer buffers are copied."""
    torch.manual_seed(0)
    steps = 300
    thetas = torch.randn(steps, 5, dtype=torch.float64).cumsum(0)  # a random walk: far from its mean
    module = Holder()
    ema = PowerEMA(module, [0.05, 0.10])
    for t in range(1, steps + 1):
        with torch.no_grad():
            module.w.copy_(thetas[t - 1])
            module.count.fill_(t)
        ema.update(module, t)
    i = torch.arange(1, steps + 1, dtype=torch.float64)
    for gamma, shadow in zip(ema.gammas, ema.shadows):
        w = (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / steps ** (gamma + 1)
        expected = (w[:, None] * thetas).sum(0)
        assert torch.allclose(shadow["w"].double(), expected, rtol=1e-5, atol=1e-5), (shadow["w"], expected)
        assert int(shadow["count"]) == steps
    assert not torch.allclose(ema.shadows[0]["w"], ema.shadows[1]["w"], atol=1e-3)  # the stds differ


# ---------------------------------------------------------------------------------------------------
# reconstruction from a real run's snapshots

STDS = [0.05, 0.07, 0.10]  # 0.07 is tracked too, to compare its reconstruction from the other two
SETS = [
    "train.steps=120",
    "train.ckpt_every=60",
    "train.log_every=60",
    "train.device=cpu",
    f"train.ema_stds={STDS}",
    "train.ema_snapshot_every=8",  # 15 snapshots
]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("posthoc") / "run"
    train(apply_overrides(load_preset("tiny"), SETS), run_dir, progress=False)
    return run_dir


def flat(tensors: dict) -> torch.Tensor:
    return torch.cat([v.double().flatten() for _, v in sorted(tensors.items()) if v.dtype.is_floating_point])


def stored_profiles(run_dir):
    """(every stored Snapshot, {std: tensors} of the newest snapshot)."""
    paths = list_snapshots(run_dir / "ema-snapshots")
    assert [snapshot_step(p) for p in paths] == [*range(8, 121, 8)]
    profiles = [s for p in paths for s in read_snapshots(p)]
    return profiles, {s.std: s.tensors for s in read_snapshots(paths[-1])}


def test_reconstructing_a_stored_profile_gives_it_back(ema_run):
    """posthoc_ema at a stored std: the fit puts weight 1 on that profile's newest snapshot, so the
    checkpoint's EMA equals it (measured: bit-equal; the test allows float32 rounding of the float64 sum
    of 45 profiles)."""
    _, newest = stored_profiles(ema_run)
    result = posthoc_ema(ema_run, 0.05)
    assert result.path == ema_run / "checkpoints" / "posthoc-std0.050.safetensors"
    assert result.step == 120 and result.snapshots == 45 and result.fit_error < 1e-6
    tensors, meta = read_checkpoint(result.path)
    assert meta["step"] == "120" and float(meta["posthoc_ema_std"]) == 0.05
    reconstructed = {k[len("ema.") :]: v for k, v in tensors.items()}
    assert sorted(reconstructed) == sorted(newest[0.05])
    for k, v in newest[0.05].items():
        assert v.dtype == reconstructed[k].dtype
        assert torch.allclose(reconstructed[k], v, rtol=1e-5, atol=1e-6), k
    # loadable as a checkpoint by name (what `sample --checkpoint` and a guide pass to load_run)
    run = load_run(ema_run, checkpoint="posthoc-std0.050.safetensors")
    assert run.step == 120 and run.checkpoint == result.path
    assert sample_run(run, 16, seed=0).shape == (16, 2)


def test_reconstructing_an_intermediate_std_is_close_to_tracking_it(ema_run):
    """sigma_rel 0.07 rebuilt from the 0.05 and 0.10 snapshots only (15 of each, every 8 of 120 steps)
    against the 0.07 EMA tracked directly in the same run. Measured: the L2 difference is 3.7e-4 of the
    L2 distance between the 0.05 and 0.10 profiles (the profile fit's relative L2 error is 4.3e-3);
    the test allows 1e-2. With 5 snapshots of each it grows to ~2e-2, with 40 it falls to ~2e-5."""
    profiles, newest = stored_profiles(ema_run)
    sources = [s for s in profiles if s.std != 0.07]
    coefficients, fit_error = posthoc_coefficients(
        [(s.step, s.gamma) for s in sources], (120, std_to_gamma(0.07))
    )
    assert float(coefficients.sum()) == pytest.approx(1.0)
    assert fit_error < 0.02
    rebuilt = flat(combine(sources, coefficients))
    direct, short, long = flat(newest[0.07]), flat(newest[0.10]), flat(newest[0.05])
    spread = float((short - long).norm())
    assert spread > 1e-3  # the profiles really differ after 120 steps
    assert float((rebuilt - direct).norm()) < 1e-2 * spread


# ---------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.3, float("nan"), float("inf")])
def test_check_std_refuses_out_of_range(bad):
    with pytest.raises(ConfigError, match=r"\(0, 0\.2887\)"):
        check_std(bad)


@pytest.mark.parametrize(
    "value",
    ["[0.5]", "[0.05, 0.05]", "[0.0]", "[nan]", "['a']", "[true]", "[[0.1]]"],
)
def test_config_refuses_bad_ema_stds(value):
    with pytest.raises(
        ConfigError, match=r"train\.ema_stds must be distinct relative stds in \(0, 0\.2887\)"
    ):
        apply_overrides(load_preset("tiny"), [f"train.ema_stds={value}"])
    with pytest.raises(ConfigError, match="train.ema_snapshot_every must be >= 1, got 0"):
        apply_overrides(load_preset("tiny"), ["train.ema_snapshot_every=0"])


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A run trained without train.ema_stds: no snapshots."""
    run_dir = tmp_path_factory.mktemp("posthoc-plain") / "run"
    cfg = apply_overrides(load_preset("tiny"), ["train.steps=5", "train.device=cpu", "train.log_every=5"])
    train(cfg, run_dir, progress=False)
    return run_dir


def folder_digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "case, args, words",
    [
        ("no-snapshots", ["--std", "0.05"], ["has no EMA snapshots", "train.ema_stds"]),
        ("too-large", ["--std", "0.5"], ["std 0.5 is out of range", "(0, 0.2887)", "--std 0.05"]),
        ("zero", ["--std", "0"], ["std 0.0 is out of range", "--std 0.05"]),
        ("nan", ["--std", "nan"], ["finite number", "got nan", "--std 0.05"]),
        ("inf", ["--std", "inf"], ["finite number", "got inf", "--std 0.05"]),
        (
            "over-a-checkpoint",
            ["--std", "0.05", "--out", "CKPT"],
            ["has a training checkpoint's name", "another --out"],
        ),
    ],
)
def test_bad_input_through_the_executable(case, args, words, ema_run, plain_run):
    """Exit 2, one line on stderr naming the value and the fix, no traceback, no file changed."""
    run_dir = plain_run if case == "no-snapshots" else ema_run
    ckpt = sorted((ema_run / "checkpoints").glob("ckpt-*.safetensors"))[-1]
    args = [str(ckpt) if a == "CKPT" else a for a in args]
    before = folder_digest(run_dir)
    proc = run_cli("posthoc-ema", str(run_dir), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffguide posthoc-ema: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert folder_digest(run_dir) == before


def test_out_is_checked_before_the_snapshots_are_read_and_only_its_own_files_are_replaced(ema_run, tmp_path):
    """A user's .safetensors, a non-.safetensors path and a training checkpoint's name are refused in one
    line, nothing changed (a plain run without snapshots gets the --out error first: checked before
    the snapshots are read); an earlier post-hoc checkpoint is replaced."""
    mine = tmp_path / "mine.safetensors"
    save_file({"w": torch.zeros(2)}, str(mine))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    before = folder_digest(tmp_path), folder_digest(ema_run)
    for out, words in (
        (mine, ["was not written by `diffguide posthoc-ema`", "replaces only its own checkpoints"]),
        (notes, ["must end in .safetensors", "posthoc-std0.050.safetensors"]),
        (tmp_path / "ckpt-00000999.safetensors", ["has a training checkpoint's name (ckpt-*)"]),
    ):
        proc = run_cli("posthoc-ema", str(tmp_path / "no-run"), "--std", "0.05", "--out", str(out))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"diffguide posthoc-ema: error: --out '{out}'"), line
        for word in words:
            assert word in line, (word, line)
    assert (folder_digest(tmp_path), folder_digest(ema_run)) == before
    own = tmp_path / "own.safetensors"
    for _ in range(2):  # written, then replaced without --force
        assert run_cli("posthoc-ema", str(ema_run), "--std", "0.05", "--out", str(own)).returncode == 0
    assert read_checkpoint(own)[1]["step"] == "120"


def test_raw_weights_of_a_posthoc_checkpoint_are_refused(ema_run):
    path = posthoc_ema(ema_run, 0.08).path
    assert path.name == "posthoc-std0.080.safetensors"
    with pytest.raises(Exception, match="holds EMA weights only"):
        load_run(ema_run, checkpoint=path, use_ema=False)


def test_posthoc_checkpoint_is_written_once_per_snapshot(ema_run):
    """What a guide option calls: the first call writes RUN/checkpoints/posthoc-std0.060, the next
    finds it up to date and leaves it alone; a file from an older snapshot step is rebuilt."""
    path = posthoc_checkpoint(ema_run, 0.06)
    assert path == ema_run / "checkpoints" / "posthoc-std0.060.safetensors"
    path.touch()
    mtime = path.stat().st_mtime_ns
    assert posthoc_checkpoint(ema_run, 0.06) == path and path.stat().st_mtime_ns == mtime
    tensors, meta = read_checkpoint(path)
    meta["step"] = "112"  # as if written before the last snapshot
    save_file(tensors, str(path), metadata=meta)
    assert posthoc_checkpoint(ema_run, 0.06) == path
    assert read_checkpoint(path)[1]["step"] == "120"
    assert load_run(ema_run, checkpoint=path).step == 120


def test_damaged_snapshot_is_named(ema_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ema_run, run_dir)
    victim = list_snapshots(run_dir / "ema-snapshots")[3]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError, match=rf"{victim.name}.*delete .* to reconstruct from the other snapshots"
    ):
        posthoc_ema(run_dir, 0.07)


def test_a_poor_fit_is_warned_about(ema_run, tmp_path):
    """sigma_rel 0.01, far below the stored 0.05..0.10, fits with relative L2 error ~0.4 from 15 snapshots:
    written, with a warning naming the error and the fix."""
    with pytest.warns(UserWarning, match=r"fit std 0\.01 poorly .* store more snapshots"):
        result = posthoc_ema(ema_run, 0.01, tmp_path / "short.safetensors")
    assert 0.1 < result.fit_error < 1


def test_guide_ema_std_is_the_same_run_with_another_ema(ema_run, tmp_path):
    """`sample --guidance auto --guide-ema-std 0.05`: autoguidance by the run's own post-hoc EMA, equal
    to the library's autoguidance with load_run(run, checkpoint=posthoc_checkpoint(run, 0.05))."""
    import numpy as np

    from diffguide.guidance import autoguidance
    from diffguide.samplers.generation import generate, sigma_grid

    out = tmp_path / "x.npz"
    r = run_cli("sample", str(ema_run), "--out", str(out), "--class", "0", "--n", "50", "--steps", "6",
                "--guidance", "auto", "--w", "2", "--guide-ema-std", "0.05", "--no-metrics")  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = load_run(ema_run)
    guide = load_run(ema_run, checkpoint=posthoc_checkpoint(ema_run, 0.05)).denoiser
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 6, run.process, s.sigma_min, s.sigma_max, s.rho)
    expected = generate(
        autoguidance(run.denoiser, guide, 2.0), 50, (2,), sigmas=sigmas, sampler=s.sampler, cond=0
    )
    np.testing.assert_allclose(np.load(out)["samples"], expected.numpy(), rtol=1e-5, atol=1e-5)
    r = run_cli("sample", str(ema_run), "--out", str(out), "--class", "0", "--guidance", "cfg",
                "--guide-ema-std", "0.05")  # fmt: skip
    assert r.returncode == 2 and "--guide-ema-std is the guide of --guidance auto or cfg+auto" in r.stderr
