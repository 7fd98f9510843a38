"""A bug (an exception no check expected) through the real executable: exit 1, one line, traceback in a file.

The bug is real code raising inside the command: a sitecustomize on the subprocess's PYTHONPATH replaces
a library function the command calls with one that raises, as a bug in that function would.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import run_cli

BROKEN = """
import {module} as target

def broken(*args, **kwargs):
    raise {error}("simulated bug in {name}\\nsecond line of its message")

target.{name} = broken
"""

LINE = re.compile(
    r"^diffguide (?P<cmd>[\w-]+): internal error: (?P<what>.+); details saved in (?P<file>.+); please report it$"
)


def with_bug(tmp_path: Path, module: str, name: str, error: str = "RuntimeError") -> dict[str, str]:
    """Environment for run_cli: `module.name` raises `error`, crash reports go under tmp_path/cache."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BROKEN.format(module=module, name=name, error=error))
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "DIFFGUIDE_CACHE": str(tmp_path / "cache")}


@pytest.mark.parametrize(
    ("argv", "module", "name", "error"),
    [
        (["presets"], "diffguide.config", "preset_summaries", "RuntimeError"),
        # inside train, after the config is read: a KeyError, the kind of bug a dict lookup makes
        (["train", "--preset", "tiny", "--out", "{T}/runs"], "diffguide.train", "train", "KeyError"),
    ],
)
def test_an_unexpected_exception_is_one_line_exit_1_and_a_saved_traceback(
    tmp_path, argv, module, name, error
):
    argv = [a.replace("{T}", str(tmp_path)) for a in argv]
    result = run_cli(*argv, env=with_bug(tmp_path, module, name, error), timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    match = LINE.match(lines[0])
    assert match, lines[0]
    assert match["cmd"] == argv[0]
    assert match["what"].startswith(f"{error}: ") and "simulated bug in" in match["what"]
    report = Path(match["file"])
    assert report.parent == tmp_path / "cache" / "crashes"
    text = report.read_text()
    assert "Traceback (most recent call last)" in text
    assert "in broken\n" in text  # the frame that raised
    assert "second line of its message" in text
    assert f"command: diffguide {' '.join(argv)}" in text


def test_a_report_goes_to_the_temporary_folder_when_the_cache_cannot_be_written(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be\n")
    env = with_bug(tmp_path, "diffguide.config", "preset_summaries")
    env.update(DIFFGUIDE_CACHE=str(blocked), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    result = run_cli("presets", env=env, timeout=60)
    assert result.returncode == 1
    match = LINE.match(result.stderr.strip())
    assert match, result.stderr
    assert Path(match["file"]).parent == tmp_path / "tmp"
    assert "RuntimeError: simulated bug" in Path(match["file"]).read_text()
