"""--force through the real executable: an existing file the command did not write is kept byte for byte
unless --force; the command's own earlier output is replaced without it (docs/bad-input.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.helpers import run_cli


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sample_keeps_a_users_file_unless_force_and_replaces_its_own(cli_run, tmp_path):
    users = tmp_path / "x.npz"
    users.write_bytes(b"a user's archive, not samples\n")
    scatter = tmp_path / "y.png"
    scatter.write_bytes(b"a user's picture\n")
    base = ("sample", str(cli_run), "--n", "8", "--steps", "2", "--no-progress", "--no-metrics")
    for out, blocked in ((users, users), (tmp_path / "y.npz", scatter)):
        before = digest(blocked)
        result = run_cli(*base, "--out", str(out), timeout=300)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        [line] = result.stderr.splitlines()
        assert f"'{blocked}'" in line and "was not written by `diffguide sample`" in line, line
        assert "add --force to replace it" in line
        assert digest(blocked) == before
    assert not (tmp_path / "y.npz").exists()  # refused before sampling: nothing written
    assert run_cli(*base, "--out", str(users), "--force", timeout=300).returncode == 0
    again = run_cli(*base, "--out", str(users), "--seed", "1", timeout=300)  # its own output: no --force
    assert again.returncode == 0, again.stderr


def test_train_classifier_keeps_an_existing_classifier_unless_force(tmp_path):
    out = tmp_path / "clf"
    out.mkdir()
    (out / "classifier.json").write_text('{"kind": "images"}\n')
    (out / "classifier.safetensors").write_bytes(b"weights someone trained\n")
    before = {p.name: digest(p) for p in out.iterdir()}
    args = ("train-classifier", "--data", "digits", "--out", str(out), "--steps", "1")
    result = run_cli(*args, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"diffguide train-classifier: error: --out '{out}' already holds a classifier (classifier.json); "
        "choose another --out, or add --force to replace it (the metrics `eval` reports with it will change)"
    ]
    assert {p.name: digest(p) for p in out.iterdir()} == before
    users = tmp_path / "notes"
    users.mkdir()
    (users / "a.txt").write_text("mine\n")
    result = run_cli("train-classifier", "--data", "digits", "--out", str(users), "--steps", "1", timeout=300)
    assert result.returncode == 2 and "is a non-empty folder without a classifier" in result.stderr
    assert [p.name for p in users.iterdir()] == ["a.txt"]
