"""The --force rule on the folder and grid writers (tune-grid, demo, guidance-bench, export-diffusers),
through the real executable: a file or folder the command did not write is kept byte for byte, the
refusal is one line before any work, and the command's own earlier output is replaced without --force
(docs/bad-input.md). posthoc-ema's rows are in tests/train/test_posthoc_ema.py."""

from __future__ import annotations

import json

import pytest

from diffguide.errors import ConfigError
from diffguide.study.experiment import MARKER, MARKER_FILE, check_out
from tests.helpers import file_digests as digests
from tests.helpers import run_cli


def refused(result, command: str, *words: str) -> str:
    """Exit 2, no traceback, one line `diffguide COMMAND: error: ...` holding every word; the line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"diffguide {command}: error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


TUNE = ("--sampler", "euler", "--nfe", "3", "--method", "direct", "--samples", "4")


def test_tune_grid_keeps_a_users_json_unless_force_and_replaces_grid_files(cli_run, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}\n')
    before = digests(tmp_path)
    result = run_cli("tune-grid", str(cli_run), *TUNE, "--out", str(mine), timeout=300)
    refused(result, "tune-grid", f"--out '{mine}'", "was not written by `diffguide tune-grid`", "--force")
    assert digests(tmp_path) == before
    # a grid file of an older version (written_by without the command) is ours: replaced without --force
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps({"format": "diffguide-grid", "sigmas": [1.0, 0.0], "written_by": "diffguide 0.1"})
    )
    for out, extra in ((old, ()), (mine, ("--force",))):
        result = run_cli("tune-grid", str(cli_run), *TUNE, "--out", str(out), *extra, timeout=300)
        assert result.returncode == 0, result.stderr
        record = json.loads(out.read_text())
        assert record["format"] == "diffguide-grid" and record["written_by"] == "diffguide tune-grid"
    # its own file now: replaced again without --force
    assert run_cli("tune-grid", str(cli_run), *TUNE, "--out", str(mine), timeout=300).returncode == 0


@pytest.mark.parametrize("command", ["demo", "guidance-bench"])
def test_study_commands_keep_a_folder_of_other_files(command, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.md").write_text("mine\n")
    (busy / "metrics.json").write_text('{"mine": 1}\n')
    a_file = tmp_path / "file.txt"
    a_file.write_text("x\n")
    before = digests(tmp_path)
    for out, words in (
        (busy, ("is a non-empty folder that", f"`diffguide {command}` did not write", "add --force")),
        (a_file, ("is a file; give a folder",)),
    ):
        result = run_cli(command, "--out", str(out), "--no-progress", timeout=120)
        refused(result, command, f"--out '{out}'", *words)
    assert digests(tmp_path) == before  # nothing written, nothing trained


def test_demo_recognises_its_own_folder_and_force_opens_another(tmp_path):
    """The library check behind `demo --out`: new, empty, an earlier demo (its marker, or a metrics.json
    from before the marker) or --force pass; a folder of other files does not."""
    check_out(tmp_path / "new")
    check_out(tmp_path)  # empty
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(ConfigError, match="did not write"):
        check_out(tmp_path)
    check_out(tmp_path, force=True)
    (tmp_path / MARKER_FILE).write_text(json.dumps(MARKER))
    check_out(tmp_path)
    (tmp_path / MARKER_FILE).write_text(json.dumps({"written_by": "diffguide eval"}))
    with pytest.raises(ConfigError, match="did not write"):
        check_out(tmp_path)
    (tmp_path / MARKER_FILE).unlink()
    (tmp_path / "metrics.json").write_text(json.dumps({"selection_rule": "", "timings_s": {}, "runs": {}}))
    check_out(tmp_path)  # a demo's output from before the marker


def test_export_refuses_a_non_empty_folder_before_loading_the_run(cli_run, tmp_path):
    """The folder is checked first: the tiny MLP run, which cannot be exported, gets the folder's error."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "model_index.json").write_text("{}\n")
    before = digests(tmp_path)
    result = run_cli("export-diffusers", str(cli_run), str(out), timeout=120)
    refused(result, "export-diffusers", f"export folder '{out}'", "not empty", "new or empty folder")
    assert digests(tmp_path) == before
    result = run_cli("export-diffusers", str(cli_run), str(out / "model_index.json"), timeout=120)
    refused(result, "export-diffusers", "is a file; give a new or empty folder")
