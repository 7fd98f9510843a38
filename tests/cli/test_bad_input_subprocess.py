"""Bad input through the real entry point in a subprocess: exit 2, one line, no traceback, no file changed.

Each row of the table is a case of docs/bad-input.md (issue 15: outputs that would replace what the
command did not create, run names that leave --out, numbers that hung or were silently accepted).
Every row hashes the whole work folder (a copy of a trained run, a user's files, earlier outputs)
before and after, so a refused command that still wrote, replaced or created a file fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from diffguide.cli.common import check_json_output
from diffguide.errors import ConfigError
from tests.helpers import run_cli

LIKELIHOOD_JSON = {"written_by": "diffguide likelihood", "n": 2, "nats_per_dim": 1.0}


@pytest.fixture(scope="module")
def work(cli_run, tmp_path_factory) -> Path:
    """A folder with a copy of the tiny run, an unconditional run, a user's files and a likelihood JSON."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train

    root = tmp_path_factory.mktemp("trust")
    shutil.copytree(cli_run, root / "run")
    overrides = ["data.conditional=false", "train.steps=2", "train.device=cpu"]
    train(apply_overrides(load_preset("tiny"), overrides), root / "uncond", progress=False)
    (root / "notes.txt").write_text("a user's notes\n")
    (root / "notes.json").write_text('{"mine": true}\n')
    (root / "likelihood.json").write_text(json.dumps(LIKELIHOOD_JSON))
    (root / "folder.json").mkdir()
    return root


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (and each folder's name), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
    }


def refused(work: Path, argv: list[str]) -> str:
    """Run `diffguide ARGV` ({W} = the work folder); it must be refused cleanly. Returns the one line."""
    argv = [a.replace("{W}", str(work)) for a in argv]
    before = hashes(work)
    result = run_cli(*argv, cwd=work, timeout=120)  # a hang fails here instead of blocking the suite
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"diffguide {argv[0]}: error: "), lines[0]
    assert hashes(work) == before, "a refused command changed, created or removed a file"
    return lines[0]


CASES = {
    # outputs: nothing is replaced that the command did not create, checked before any work
    "eval-out-run-config": (
        ["eval", "run", "--out", "run/config.json"],
        "--out 'run/config.json' is a file of run 'run' (config.json); a run's own files are never "
        "replaced, not even with --force: choose another path, e.g. --out run/eval.json",
    ),
    "eval-out-run-config-force": (
        ["eval", "run", "--out", "run/config.json", "--force"],
        "is a file of run 'run' (config.json)",
    ),
    "likelihood-out-checkpoint": (
        ["likelihood", "run", "--out", "run/checkpoints/ckpt-00000060.safetensors"],
        "--out 'run/checkpoints/ckpt-00000060.safetensors' must end in .json (this command writes JSON); "
        "e.g. --out likelihood.json",
    ),
    "likelihood-out-into-checkpoints": (
        ["likelihood", "run", "--out", "run/checkpoints/new.json", "--force"],
        "--out 'run/checkpoints/new.json' would write into run 'run' (checkpoints/new.json); a run's own "
        "files are never replaced, not even with --force",
    ),
    "likelihood-out-txt": (
        ["likelihood", "run", "--out", "notes.txt"],
        "--out 'notes.txt' must end in .json",
    ),
    "likelihood-out-users-json": (
        ["likelihood", "run", "--out", "notes.json"],
        "--out 'notes.json' exists and was not written by `diffguide likelihood`; choose another path, "
        "or add --force to replace it",
    ),
    "eval-out-likelihoods-json": (
        ["eval", "run", "--out", "likelihood.json"],
        "--out 'likelihood.json' exists and was not written by `diffguide eval`",
    ),
    "likelihood-out-folder": (
        ["likelihood", "run", "--out", "folder.json"],
        "--out 'folder.json' is a folder; give a .json file, e.g. --out folder.json/likelihood.json",
    ),
    "likelihood-out-under-a-file": (
        ["likelihood", "run", "--out", "notes.txt/x.json"],
        "cannot write 'notes.txt/x.json': 'notes.txt' is a file, not a folder",
    ),
    "train-name-escapes": (
        ["train", "--preset", "tiny", "--out", "runs", "--name", "../escape"],
        "run name '../escape' must be a single folder name inside --out (no '/', '..' or absolute path), "
        "e.g. --name escape",
    ),
    "train-name-absolute": (
        ["train", "--preset", "tiny", "--out", "runs", "--name", "{W}/elsewhere"],
        "must be a single folder name inside --out",
    ),
    # likelihood: every number checked before work (nan and inf used to hang the solver)
    "likelihood-rtol-nan": (
        ["likelihood", "run", "--rtol", "nan"],
        "rtol (the solver's relative tolerance) must be a number in (0, 1), got nan",
    ),
    "likelihood-rtol-0": (["likelihood", "run", "--rtol", "0"], "must be a number in (0, 1), got 0.0"),
    "likelihood-atol-inf": (
        ["likelihood", "run", "--atol", "inf"],
        "atol (the solver's absolute tolerance) must be a finite number > 0, got inf",
    ),
    "likelihood-sigma-max-inf": (
        ["likelihood", "run", "--sigma-max", "inf"],
        "sigma_max must be a finite number > 0, got inf",
    ),
    "likelihood-sigma-min-nan": (
        ["likelihood", "run", "--sigma-min", "nan"],
        "sigma_min must be a finite number > 0, got nan",
    ),
    "likelihood-sigma-min-0": (["likelihood", "run", "--sigma-min", "0"], "got 0.0"),
    "likelihood-sigmas-upside-down": (
        ["likelihood", "run", "--sigma-min", "5", "--sigma-max", "1"],
        "need sigma_min < sigma_max, got sigma_min=5.0, sigma_max=1.0",
    ),
    "likelihood-sigma-max-above-process": (
        ["likelihood", "run", "--sigma-min", "100"],
        "need sigma_min < sigma_max, got sigma_min=100.0, sigma_max=80.0",
    ),
    "likelihood-method-foo": (
        ["likelihood", "run", "--method", "foo"],
        "unknown solve_ivp method 'foo'; choices: BDF, DOP853, LSODA, RK23, RK45, Radau",
    ),
    "likelihood-n-0": (["likelihood", "run", "--n", "0"], "--n must be >= 1, got 0"),
    "likelihood-conditional-unconditional-run": (
        ["likelihood", "uncond", "--conditional"],
        "conditional=True (--conditional) needs a class-conditional run; run 'tiny' is unconditional",
    ),
    # eval and sample numbers
    "eval-k-0": (["eval", "run", "--k", "0"], "--k (neighbours for precision/recall) must be >= 1, got 0"),
    "sample-n-huge": (
        ["sample", "run", "--n", "1000000000000", "--out", "x.npz"],
        "number of samples 1000000000000 is too large: 1000000000000 samples of shape (2,) take 7.3 TiB as "
        "float32, held twice while the batches are joined, and this machine has ",
    ),
    "sample-eta-inf": (
        ["sample", "run", "--n", "5", "--sampler", "ddim", "--sampler-option", "eta=inf", "--out", "x.npz"],
        "option eta of sampler 'ddim' must be a finite number >= 0, got inf",
    ),
    # guidance options that would be ignored, or a range that is empty or NaN
    "sample-w-without-guidance": (
        ["sample", "run", "--out", "x.npz", "--w", "3"],
        "--w 3 applies to a guidance method and would be ignored without one: add --guidance KIND",
    ),
    "sample-guide-without-guidance": (
        ["sample", "run", "--out", "x.npz", "--guide", "run"],
        "--guide applies to --guidance auto, classifier or cfg+auto, not none",
    ),
    "sample-interval-upside-down": (
        ["sample", "run", "--out", "x.npz", "--guidance", "auto", "--guide", "run", "--interval", "0.5", "0.05"],
        "--interval needs 0 <= LO < HI (sigmas), got 0.5 0.05",
    ),
    "sample-interval-nan": (
        ["sample", "run", "--out", "x.npz", "--guidance", "auto", "--guide", "run", "--interval", "nan", "1"],
        "--interval needs 0 <= LO < HI (sigmas), got nan 1",
    ),
    "train-classifier-points-data": (
        ["train-classifier", "--data", "tree", "--out", "clf"],
        "dataset 'tree' is points data; this classifier is an image feature classifier",
    ),
    "train-resume-missing-run": (
        ["train", "--preset", "tiny", "--out", ".", "--name", "never", "--resume"],
        "--resume: there is no run 'never' to resume (no config.json there)",
    ),
    # resume: every differing key named with both values; train.steps may grow, not shrink
    "train-resume-changed-config": (
        ["train", "--config", "run/config.json", "--out", ".", "--name", "run", "--resume",
         "--set", "train.lr=0.5", "--set", "model.width=64"],
        "cannot resume 'run': the config differs from the saved one: model.width: saved 32, now 64; "
        "train.lr: saved 0.002, now 0.5. Resume with the saved values",
    ),
    "train-resume-fewer-steps": (
        ["train", "--config", "run/config.json", "--out", ".", "--name", "run", "--resume",
         "--set", "train.steps=30"],
        "train.steps: saved 60, now 30",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(work, argv, message):
    line = refused(work, argv)
    assert message in line, line


def test_force_replaces_a_users_json_and_a_command_replaces_its_own(work, tmp_path):
    """--force replaces a file the command did not write; its own earlier output needs no --force."""
    out = tmp_path / "notes.json"
    shutil.copy(work / "notes.json", out)
    run = str(work / "run")
    base = ["likelihood", run, "--n", "2", "--out", str(out)]
    result = run_cli(*base, "--force", timeout=300)
    assert result.returncode == 0, result.stderr
    first = json.loads(out.read_text())
    assert first["written_by"] == "diffguide likelihood" and "mine" not in first
    result = run_cli(*base, "--seed", "1", timeout=300)  # its own file: replaced without --force
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["nats_per_dim"] != first["nats_per_dim"]


def test_json_outputs_recognised_without_running_a_command(tmp_path):
    """A run's eval.json (also one written before `written_by` existed) may be replaced by eval."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    keys = ("run", "step", "n", "sampler", "sample_seconds", "classifier")
    assert check_json_output(run / "eval.json", "eval", legacy_keys=keys) == run / "eval.json"
    (run / "eval.json").write_text(json.dumps(dict.fromkeys(keys, 1)))  # an eval.json of an older version
    check_json_output(run / "eval.json", "eval", legacy_keys=keys)
    (run / "eval.json").write_text(json.dumps({"written_by": "diffguide eval"}))
    check_json_output(run / "eval.json", "eval")
    # written by another command: in a run folder, only with --force; a user's file there: never
    (run / "eval.json").write_text(json.dumps({"written_by": "diffguide likelihood"}))
    with pytest.raises(ConfigError, match="was not written by `diffguide eval`"):
        check_json_output(run / "eval.json", "eval")
    check_json_output(run / "eval.json", "eval", force=True)
    (run / "eval.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="a run's own files are never replaced, not even with --force"):
        check_json_output(run / "eval.json", "eval", force=True)
    # a link to a run's config is the run's config
    (tmp_path / "link.json").symlink_to(run / "config.json")
    with pytest.raises(ConfigError, match=r"is a file of run .* \(config.json\)"):
        check_json_output(tmp_path / "link.json", "eval", force=True)


def test_resuming_a_finished_run_says_so_and_changes_nothing(cli_run, tmp_path):
    """`train --resume` of a finished run: exit 0, says it is finished and how to train longer, and
    writes nothing (no new TensorBoard file, no re-rendered figure, config.json untouched)."""
    shutil.copytree(cli_run, tmp_path / "tiny")
    before = hashes(tmp_path)
    result = run_cli(
        "train", "--config", "tiny/config.json", "--out", ".", "--resume", cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "run 'tiny' is already finished (train.steps=60 reached); nothing to do" in result.stdout
    assert "--set train.steps=120 --resume" in result.stdout
    assert hashes(tmp_path) == before
