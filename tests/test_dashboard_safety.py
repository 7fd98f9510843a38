"""The dashboard's path checks and process checks: names from the browser never leave the runs folder,
and only processes the dashboard started (and that are still those processes) can be signalled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffguide.dashboard.jobs import Job, JobRegistry, is_our_process
from diffguide.dashboard.safety import RunsFolder, UnsafePath, check_name, split_run_id
from diffguide.errors import ConfigError


def make_run(folder, name):
    path = folder / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "good")
    make_run(root, "good/amateur")
    outside = make_run(tmp_path, "secret")
    (outside / "data.txt").write_text("secret")
    (root / "escape").symlink_to(outside)  # a symlink out of the runs folder, with a config.json
    (root / "inside-link").symlink_to(root / "good")  # a symlink that stays inside is fine
    return RunsFolder(root)


@pytest.mark.parametrize("name", ["tiny", "tree-edm", "run_1.v2", "A", "0", "x" * 100])
def test_plain_names_are_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", "a/b", "a\\b", "/etc", "x" * 101, "a b", "na\0me", "~root", "-rf", None],
)
def test_other_names_are_refused(name):
    with pytest.raises(UnsafePath, match="refused"):
        check_name(name)


@pytest.mark.parametrize(
    "run_id",
    ["..", "../x", "../../etc/passwd", "/etc", "/tmp/runs/good", "good/../../x", "good/..", "a/b/c", "C:\\x",
     "good\\..\\x", "", ".dashboard", "good/.hidden"],
)  # fmt: skip
def test_traversal_run_ids_are_refused(runs, run_id):
    with pytest.raises(UnsafePath, match="refused"):
        runs.run_dir(run_id)


def test_run_ids_inside_are_resolved(runs):
    assert runs.run_dir("good") == runs.root / "good"
    assert runs.run_dir("good/amateur") == runs.root / "good" / "amateur"
    assert split_run_id("good/amateur") == ["good", "amateur"]


def test_symlink_out_of_the_folder_is_refused_and_not_listed(runs):
    with pytest.raises(UnsafePath, match="outside the runs folder"):
        runs.run_dir("escape")
    with pytest.raises(UnsafePath):
        runs.file("escape", "data.txt")
    assert runs.run_ids() == ["good", "good/amateur", "inside-link", "inside-link/amateur"]


def test_files_are_checked_too(runs):
    assert runs.file("good", "config.json") == runs.root / "good" / "config.json"
    for bad in ["../escape", "..", "/etc/passwd", ".dashboard"]:
        with pytest.raises(UnsafePath):
            runs.file("good", bad)


def test_missing_run_is_a_readable_error(runs):
    with pytest.raises(UnsafePath, match="no run named 'nope'"):
        runs.run_dir("nope")


def test_state_dir_symlink_is_refused(tmp_path, runs):
    (runs.root / ".dashboard").symlink_to(tmp_path)
    with pytest.raises(UnsafePath, match="symlink"):
        runs.state_dir()


# ---------------------------------------------------------------------------------------------
# processes: only our own, verified by start time and command line


def test_registry_stops_its_own_process_and_refuses_a_changed_one(tmp_path):
    registry = JobRegistry(RunsFolder(tmp_path))
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    job = registry._spawn("sleeper", argv, "train", {})
    try:
        assert is_our_process(job) and registry.status(job) == "running"
        # the same PID with another start time or command line is not ours: refused, not signalled
        for fake in (
            Job(**{**job.__dict__, "start_ticks": (job.start_ticks or 0) + 1, "id": "fake1"}),
            Job(**{**job.__dict__, "argv": ["python", "-m", "other"], "id": "fake2"}),
        ):
            registry._save([fake, *registry.jobs()])
            with pytest.raises(ConfigError, match="not running"):
                registry.stop(fake.id)
        assert job.pid in {j.pid for j in registry.running()}
        registry.stop(job.id)
        deadline = time.time() + 20
        while is_our_process(job) and time.time() < deadline:
            time.sleep(0.05)
        assert not is_our_process(job)
        assert registry.get(job.id).stop_requested > 0
    finally:
        if is_our_process(job):
            os.kill(job.pid, 9)


def test_registry_refuses_processes_it_did_not_start(tmp_path):
    """A registry entry naming another process (here: this test's own) is never signalled."""
    registry = JobRegistry(RunsFolder(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (os.getpid(), other.pid):
            job = Job(
                f"job{pid}",
                "x",
                pid,
                [sys.executable, "-m", "diffguide", "train"],
                12345,
                time.time(),
                "x.log",
            )
            registry._save([job])
            assert not is_our_process(job)
            with pytest.raises(ConfigError, match="not running"):
                registry.stop(job.id)
        assert other.poll() is None  # still alive: nothing was sent
        with pytest.raises(ConfigError, match="no training job"):
            registry.stop("nonexistent")
    finally:
        other.kill()
        other.wait()


def test_launch_checks_names_and_values_before_starting(tmp_path):
    registry = JobRegistry(RunsFolder(tmp_path))
    with pytest.raises(UnsafePath):
        registry.launch("tiny", "../evil", [])
    with pytest.raises(ConfigError, match="unknown preset"):
        registry.launch("tinyy", "ok", [])
    with pytest.raises(ConfigError, match="train.steps must be >= 1"):
        registry.launch("tiny", "ok", ["train.steps=0"])
    with pytest.raises(ConfigError, match="not an option"):
        registry.launch("tiny", "ok", [], ["--evil"])
    assert registry.jobs() == []
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


# ---------------------------------------------------------------------------------------------
# the command: loopback by default, readable errors


def test_dashboard_command_defaults_to_loopback_and_no_telemetry():
    from diffguide.cli import build_parser
    from diffguide.cli.dashboard import server_command

    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.runs) == ("127.0.0.1", 8501, "runs")
    cmd = server_command(Path("app.py"), args.host, args.port)
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--browser.gatherUsageStats"] == "false" and flags["--server.headless"] == "true"


def test_dashboard_command_reports_a_busy_port(tmp_path, capsys):
    import socket

    from diffguide.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["dashboard", "--runs", str(tmp_path / "runs"), "--port", str(port)])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
