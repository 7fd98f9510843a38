"""The `diffguide` command end to end (subprocesses on the tiny preset), plus its error exits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffguide.cli import main
from diffguide.config import preset_names
from tests.helpers import run_cli


def test_presets_lists_every_preset():
    result = run_cli("presets")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert listed == preset_names()


def test_train_writes_the_run_folder(cli_run):
    config = json.loads((cli_run / "config.json").read_text())
    assert config["name"] == "tiny" and config["train"]["steps"] == 60
    ckpts = sorted(p.name for p in (cli_run / "checkpoints").glob("ckpt-*.safetensors"))
    assert ckpts == ["ckpt-00000030.safetensors", "ckpt-00000060.safetensors"]  # ckpt_every=30
    assert (cli_run / "checkpoints" / "latest").read_text().strip() == "ckpt-00000060.safetensors"
    steps = [json.loads(line)["step"] for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]  # log_every=10
    assert any((cli_run / "tb").glob("events.out.tfevents.*"))
    assert (cli_run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_is_deterministic_across_runs_and_batch_sizes(cli_run, tmp_path):
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    first = run_cli("sample", str(cli_run), "--out", str(a), "--n", "50", "--seed", "0")
    assert first.returncode == 0, first.stderr
    second = run_cli("sample", str(cli_run), "--out", str(b), "--n", "50", "--seed", "0", "--batch-size", "7")
    assert second.returncode == 0, second.stderr
    assert a.with_suffix(".png").is_file() and b.with_suffix(".png").is_file()
    # the same command again, in this process, and with another seed
    assert main(["sample", str(cli_run), "--out", str(c), "--n", "50", "--seed", "0"]) == 0
    samples = [np.load(p)["samples"] for p in (a, b, c)]
    assert samples[0].shape == (50, 2) and np.isfinite(samples[0]).all()
    assert np.array_equal(samples[0], samples[2]), "a second run changed the samples"
    # Across batch sizes the noise streams are the same (tests/core/test_noise.py checks that bit for bit);
    # the float32 MLP's matrix products round differently for 7 rows than for 50 (measured: up to
    # 3e-7 apart), so here equality is to float32 rounding. A wrong noise stream moves samples by O(1).
    np.testing.assert_allclose(samples[1], samples[0], rtol=0, atol=1e-5)
    assert main(["sample", str(cli_run), "--out", str(c), "--n", "50", "--seed", "1"]) == 0
    assert not np.array_equal(samples[0], np.load(c)["samples"])


def test_sample_with_class_writes_labels(cli_run, tmp_path):
    out = tmp_path / "cls.npz"
    assert main(["sample", str(cli_run), "--out", str(out), "--n", "5", "--class", "1", "--steps", "4"]) == 0
    assert np.load(out)["labels"].tolist() == [1] * 5


def test_clip_denoised_bounds_every_estimate_and_equals_the_library(cli_run, tmp_path, capsys):
    """--clip-denoised LOW HIGH wraps the (guided) denoiser in ClipDenoised: the samples, which end as
    the last x0 estimate, lie in [LOW, HIGH] per coordinate although unclipped ones leave it, and equal
    the library's generate() with ClipDenoised from the same seed. LOW >= HIGH is refused."""
    from diffguide.denoiser import ClipDenoised
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    plain, clipped = tmp_path / "plain.npz", tmp_path / "clipped.npz"
    args = ["sample", str(cli_run), "--n", "64", "--steps", "8", "--no-metrics"]
    assert main([*args, "--out", str(plain)]) == 0
    assert main([*args, "--out", str(clipped), "--clip-denoised", "-0.5", "0.5"]) == 0
    unclipped, got = np.load(plain)["samples"], np.load(clipped)["samples"]
    assert (np.abs(unclipped) > 0.5).any()  # the bound binds
    assert got.min() >= -0.5 and got.max() <= 0.5
    run = load_run(cli_run)
    sigmas = sigma_grid(run.config.sample.grid, 8, run.process)
    ref = generate(
        ClipDenoised(run.denoiser, -0.5, 0.5),
        64,
        run.dataset.shape,
        sigmas=sigmas,
        sampler=run.config.sample.sampler,
        seed=0,
    )
    np.testing.assert_array_equal(got, ref.numpy())
    capsys.readouterr()
    assert main([*args, "--out", str(clipped), "--clip-denoised", "1", "-1"]) == 2
    assert "--clip-denoised needs LOW < HIGH, got 1 -1" in capsys.readouterr().err


def test_bad_inputs_exit_2_with_the_promised_message_subprocess(cli_run, tmp_path):
    """Through the real entry point: exit code 2 and the message naming the closest choice."""
    result = run_cli(
        "sample", str(cli_run), "--out", str(tmp_path / "x.npz"), "--n", "5", "--sampler", "huen"
    )
    assert result.returncode == 2
    assert "unknown sampler 'huen'; did you mean 'heun'?" in result.stderr
    result = run_cli("train", "--preset", "tree-edn", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown preset 'tree-edn'; did you mean 'tree-edm'" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--preset", "tiny", "--set", "trian.steps=5"],
            "unknown config key 'trian.steps'; did you mean 'train.steps'",
        ),
        (["train", "--preset", "tiny", "--set", "train.steps=-1"], "train.steps must be >= 1, got -1"),
        (["sample", "{run}", "--n", "-3"], "--n must be >= 1, got -3"),
        (["sample", "{run}", "--n", "5", "--class", "2"], "--class must be in 0..1, got 2"),
        (["sample", "{run}", "--n", "5", "--grid", "karas"], "did you mean 'karras'"),
        (["sample", "{tmp}", "--n", "5"], "is not a run folder: it has no config.json"),
        (
            ["sample", "{run}", "--n", "5", "--sampler", "ddim", "--sampler-option", "etaa=1"],
            "unknown option 'etaa' for sampler 'ddim'; did you mean 'eta'? choices: eta",
        ),
        (
            ["sample", "{run}", "--n", "5", "--sampler", "euler", "--sampler-option", "eta=1"],
            "sampler 'euler' takes no options, got 'eta=1'",
        ),
        (
            ["sample", "{run}", "--n", "5", "--sampler", "ipndm", "--sampler-option", "max_order=2.5"],
            "option max_order of sampler 'ipndm' must be an integer >= 0 (default 4), got 2.5",
        ),
        (
            ["sample", "{run}", "--n", "5", "--sampler", "ddim", "--sampler-option", "eta=-1"],
            "option eta of sampler 'ddim' must be a number >= 0 (default 0.0), got -1",
        ),
    ],
)
def test_bad_inputs_exit_2_with_the_promised_message(argv, message, cli_run, tmp_path, capsys):
    argv = [a.format(run=cli_run, tmp=tmp_path) for a in argv]
    if argv[0] == "sample":
        argv += ["--out", str(tmp_path / "x.npz")]
    else:
        argv += ["--out", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffguide {argv[0]}: error: ") and message in err, err
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_sampler_options_reach_the_sampler(cli_run, tmp_path, capsys):
    """--sampler-option eta=1 gives exactly the library's sample_ddim(..., eta=1), and differs from eta=0."""
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    run = load_run(cli_run)
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 8, run.process, s.sigma_min, s.sigma_max, s.rho)
    common = dict(sigmas=sigmas, sampler="ddim", seed=3)
    expected = {
        eta: generate(run.denoiser, 40, run.dataset.shape, **common, sampler_kwargs={"eta": eta})
        for eta in (0.0, 1.0)
    }
    for eta in (0.0, 1.0):
        out = tmp_path / f"eta{eta}.npz"
        argv = ["sample", str(cli_run), "--n", "40", "--seed", "3", "--steps", "8", "--sampler", "ddim"]
        assert main([*argv, "--sampler-option", f"eta={eta}", "--out", str(out)]) == 0, (
            capsys.readouterr().err
        )
        got = np.load(out)["samples"]
        np.testing.assert_array_equal(got, expected[eta].numpy())
    assert not np.allclose(expected[0.0].numpy(), expected[1.0].numpy())


def test_grid_options_reach_the_grid(cli_run, tmp_path, capsys):
    """--sigma-min/--sigma-max/--rho give exactly the Karras grid with those values (eq. 5 of Karras et al.)."""
    from diffguide.grids import karras_sigmas
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate

    run = load_run(cli_run)
    sigmas = karras_sigmas(6, 0.01, 20.0, 3.0)
    expected = generate(run.denoiser, 30, run.dataset.shape, sigmas=sigmas, sampler="euler", seed=1)
    out = tmp_path / "g.npz"
    argv = ["sample", str(cli_run), "--n", "30", "--seed", "1", "--steps", "6", "--sampler", "euler"]
    argv += ["--grid", "karras", "--sigma-min", "0.01", "--sigma-max", "20", "--rho", "3", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out)["samples"], expected.numpy())
    assert main([*argv[:-2], "--rho", "0", "--out", str(out)]) == 2
    assert "the Karras grid needs rho > 0, got rho=0.0" in capsys.readouterr().err


def test_speed_flags_are_the_config_keys_they_name(tmp_path, capsys):
    from diffguide.cli import build_parser
    from diffguide.cli.core import resolve_config

    parse = build_parser().parse_args
    plain = resolve_config(parse(["train", "--preset", "tiny"]))
    assert (plain.train.precision, plain.train.compile, plain.train.accum_steps) == ("fp32", False, 1)
    fast = resolve_config(
        parse(
            [
                "train",
                "--preset",
                "tiny",
                "--precision",
                "bf16",
                "--compile",
                "--channels-last",
                "--accum-steps",
                "4",
            ]
        )
    )
    t = fast.train
    assert (t.precision, t.compile, t.channels_last, t.accum_steps) == ("bf16", True, True, 4)
    # the flags go through the same checks as --set: 3 does not divide the tiny preset's batch of 256
    assert main(["train", "--preset", "tiny", "--accum-steps", "3", "--out", str(tmp_path / "runs")]) == 2
    assert "train.accum_steps must be >= 1 and divide train.batch_size=256, got 3" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_version_and_help(capsys):
    from diffguide import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"diffguide {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in (
        "presets",
        "train",
        "sample",
        "demo",
        "train-classifier",
        "eval",
        "dashboard",
        "likelihood",
    ):
        assert f"    {command}" in out, command


def test_2d_samples_come_with_exact_metrics(cli_run, tmp_path, capsys):
    """`sample` prints and saves the exact metrics; checked on samples whose answer is known: true draws
    of class 1 score precision ~0.99 against p(x | 1) and mean log p = E[log p(x | 1)] of those points;
    against p(x) the other class's region is never visited, so coverage drops."""
    from diffguide.cli.core import write_exact_metrics
    from diffguide.models.runs import load_run

    run = load_run(cli_run)
    mixture = run.dataset.mixture
    x, comp = mixture.sample(20_000, generator=torch.Generator().manual_seed(9))
    ones = x[mixture.classes[comp] == 1][:4000]
    labels = np.ones(len(ones), dtype=np.int64)
    truth = float(mixture.log_prob(ones, 0.0, torch.ones(len(ones), dtype=torch.long)).mean())
    write_exact_metrics(tmp_path / "true.npz", ones, run, labels)
    record = json.loads((tmp_path / "true.metrics.json").read_text())
    name = mixture.class_names[1]
    assert record["against"] == f"p(x | {name})"
    assert abs(record["precision"] - 0.99) < 0.01  # binomial sd 0.0016, plus the 99% level's estimate
    assert record["coverage"] > 0.85  # true draws: only finite-sample histogram noise
    assert record["mean_logp"] == pytest.approx(truth, abs=1e-9)
    assert record["against_p(x)"]["coverage"] < record["coverage"] - 0.2  # the other class never visited
    printed = capsys.readouterr().out
    assert f"exact metrics against p(x | {name}): precision {record['precision']:.3f}" in printed

    # through the command: the file beside --out; --no-metrics skips it
    out = tmp_path / "s.npz"
    assert (
        main(["sample", str(cli_run), "--n", "100", "--class", "1", "--steps", "8", "--out", str(out)]) == 0
    )
    assert json.loads((tmp_path / "s.metrics.json").read_text())["against"] == f"p(x | {name})"
    capsys.readouterr()
    other = tmp_path / "t.npz"
    assert main(["sample", str(cli_run), "--n", "50", "--no-metrics", "--out", str(other)]) == 0
    assert not (tmp_path / "t.metrics.json").exists() and "exact metrics" not in capsys.readouterr().out


def test_sample_n_defaults_to_the_runs_sample_n(cli_run, tmp_path):
    """Like --sampler and --steps, --n comes from the run (config.json's sample.n) when not given."""
    expected = json.loads((cli_run / "config.json").read_text())["sample"]["n"]
    assert main(["sample", str(cli_run), "--out", str(tmp_path / "s.npz"), "--no-metrics"]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (expected, 2)
    assert main(["sample", str(cli_run), "--n", "7", "--out", str(tmp_path / "t.npz"), "--no-metrics"]) == 0
    assert np.load(tmp_path / "t.npz")["samples"].shape == (7, 2)
