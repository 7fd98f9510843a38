"""The dashboard's path checks and process checks: names from the browser never leave the runs folder,
and only processes the dashboard started (and that are still those processes) can be signalled."""

from __future__ import annotations

import os
import re
import shutil
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
# links inside a run folder (or the dashboard's own folder) that lead out of the runs folder


@pytest.fixture
def real_runs(tmp_path, dashboard_source_runs):
    """A runs folder holding a copy of the tiny run the AppTest tests train once per session, and an empty
    folder outside it."""
    source = dashboard_source_runs
    root = tmp_path / "runs"
    shutil.copytree(source / "tiny", root / "tiny")
    outside = tmp_path / "outside"
    outside.mkdir()
    return RunsFolder(root), outside


def move_out(folder: RunsFolder, rel: str, outside: Path) -> Path:
    """Move RUNS/tiny/REL outside the runs folder and leave a symlink to it: the outside copy is intact."""
    inner = folder.root / "tiny" / rel
    target = outside / inner.name
    shutil.move(inner, target)
    inner.symlink_to(target)
    return target


def tree_state(path: Path) -> dict:
    """Name -> (size, mtime_ns) of everything below `path`: shows whether anything was written there."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.mark.parametrize("rel", ["checkpoints", "metrics.jsonl", "samples.png", "config.json",
                                 "checkpoints/latest"])  # fmt: skip
def test_links_out_inside_a_run_are_refused_for_reading_and_launching(real_runs, rel):
    from diffguide.dashboard import catalog

    folder, outside = real_runs
    target = move_out(folder, rel, outside)
    if rel == "metrics.jsonl":  # a value the page would show if it read the outside file
        target.write_text('{"step": 1, "loss": 123.456}\n')
    before = tree_state(outside)
    shown = f"refused 'tiny/{rel}': it is a symlink to {str(target)!r}, outside the runs folder"
    with pytest.raises(UnsafePath, match=re.escape(shown)):
        folder.run_dir("tiny")
    with pytest.raises(UnsafePath, match=re.escape(shown)):
        folder.file("tiny", "samples.png")
    row = catalog.summarize(folder, "tiny")  # the Runs table: a row saying why, nothing read
    assert row.error.startswith(shown) and row.last_loss is None and row.checkpoints == []
    registry = JobRegistry(folder)
    with pytest.raises(UnsafePath, match=re.escape(shown)):
        registry.resume("tiny")
    with pytest.raises(UnsafePath, match=re.escape(shown)):
        registry.launch("tiny", "tiny", [])
    assert registry.jobs() == [] and tree_state(outside) == before


def test_links_out_in_a_new_run_or_its_amateur_refuse_the_launch(real_runs):
    folder, outside = real_runs
    registry = JobRegistry(folder)
    for name in ("fresh", "fresh-amateur"):  # a prepared folder whose checkpoints/ leads out
        (folder.root / name).mkdir()
        (folder.root / name / "checkpoints").symlink_to(outside)
    with pytest.raises(UnsafePath, match="refused 'fresh/checkpoints'"):
        registry.launch("tiny", "fresh", [])
    shutil.rmtree(folder.root / "fresh")
    with pytest.raises(UnsafePath, match="refused 'fresh-amateur/checkpoints'"):
        registry.launch("tiny", "fresh", [], ["--with-amateur"])
    assert registry.jobs() == [] and list(outside.iterdir()) == []


def test_a_link_that_stays_inside_is_followed_and_checked(real_runs):
    """A link to a folder inside the runs folder is fine, but a link out below that folder is not."""
    folder, outside = real_runs
    shutil.move(folder.root / "tiny" / "checkpoints", folder.root / "kept")
    (folder.root / "tiny" / "checkpoints").symlink_to(folder.root / "kept")
    assert folder.run_dir("tiny") == folder.root / "tiny"
    (folder.root / "kept" / "extra").symlink_to(outside)
    with pytest.raises(UnsafePath, match="refused 'tiny/checkpoints/extra'"):
        folder.run_dir("tiny")
    (folder.root / "kept" / "extra").unlink()
    (folder.root / "kept" / "loop").symlink_to(folder.root / "tiny")  # a loop inside ends
    assert folder.run_dir("tiny") == folder.root / "tiny"


@pytest.mark.parametrize("rel", ["logs", "jobs.json", "logs/next.log"])
def test_links_out_of_the_dashboard_folder_are_refused(real_runs, rel, monkeypatch):
    folder, outside = real_runs
    state = folder.state_dir()
    if rel != "logs":
        (state / "logs").mkdir()
    target = outside / "target"
    if rel == "jobs.json":
        target.write_text('{"jobs": []}')
    elif rel == "logs":
        target.mkdir()
    (state / rel).symlink_to(target)
    before = tree_state(outside)
    registry = JobRegistry(folder)
    with pytest.raises(UnsafePath, match=re.escape(f"refused '.dashboard/{rel}': it is a symlink to")):
        registry.launch("tiny", "new-run", ["train.steps=5"])
    with pytest.raises(UnsafePath, match="refused '.dashboard/"):
        registry.jobs()
    assert tree_state(outside) == before
    assert not (folder.root / "new-run").exists()  # nothing was started


# ---------------------------------------------------------------------------------------------
# processes: only our own, verified by start time, command line, command and the job's token


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    """`python -m diffguide train ...` resolves to a package that only sleeps (PYTHONPATH comes before
    the installed diffguide): a process with exactly a training job's command line, started in a moment."""
    package = tmp_path / "fake" / "diffguide"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    return tmp_path


def train_argv(root: Path) -> list[str]:
    return [sys.executable, "-m", "diffguide", "train", "--out", str(root), "--name", "x"]


def wait_gone(job, timeout: float = 20) -> bool:
    deadline = time.time() + timeout
    while is_our_process(job) and time.time() < deadline:
        time.sleep(0.05)
    return not is_our_process(job)


def test_registry_stops_its_own_process_and_refuses_a_changed_one(fake_trainer):
    folder = RunsFolder(fake_trainer / "runs")
    registry = JobRegistry(folder)
    job = registry.spawn("sleeper", train_argv(folder.root), "train", {})
    try:
        assert is_our_process(job) and registry.status(job) == "running"
        # the same PID with another start time, command line or token hash is not ours: not signalled
        for fake in (
            Job(**{**job.__dict__, "start_ticks": (job.start_ticks or 0) + 1, "id": "fake1"}),
            Job(**{**job.__dict__, "argv": ["python", "-m", "other"], "id": "fake2"}),
            Job(**{**job.__dict__, "token_sha256": "0" * 64, "id": "fake3"}),
        ):
            registry._save([fake, *registry.jobs()])
            with pytest.raises(ConfigError, match="not running"):
                registry.stop(fake.id)
        assert job.pid in {j.pid for j in registry.running()}
        registry.stop(job.id)
        assert wait_gone(job)
        assert registry.get(job.id).stop_requested > 0
    finally:
        if is_our_process(job):
            os.kill(job.pid, 9)


def test_forged_entries_for_other_processes_are_not_stopped(fake_trainer):
    """jobs.json is a plain file: an entry naming another process with its real start time and command
    line (even a training command line, even the real job's token hash) must not get it signalled."""
    from diffguide.dashboard.jobs import _cmdline, _start_ticks

    folder = RunsFolder(fake_trainer / "runs")
    registry = JobRegistry(folder)
    real = registry.spawn("real", train_argv(folder.root), "train", {})
    lookalike = subprocess.Popen(train_argv(folder.root), cwd=folder.root)  # same command, no token
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.time() + 10
        while time.time() < deadline and _cmdline(lookalike.pid) != train_argv(folder.root):
            time.sleep(0.01)
        forged = [  # each with its process's real start time and command line, and the real job's hash
            Job(f"forged{i}", "f", pid, _cmdline(pid), _start_ticks(pid), time.time(), "x.log")
            for i, pid in enumerate((lookalike.pid, sleeper.pid, os.getpid()))
        ]
        for job in forged:
            job.token_sha256 = real.token_sha256
        registry._save([*forged, *registry.jobs()])
        for job in forged:
            assert not is_our_process(registry.get(job.id))
            with pytest.raises(ConfigError, match="not running"):
                registry.stop(job.id)
        assert [j.id for j in registry.running()] == [real.id]
        assert lookalike.poll() is None and sleeper.poll() is None  # still alive: nothing was sent
        registry.stop(real.id)  # the job the dashboard started is stopped
        assert wait_gone(real)
        assert lookalike.poll() is None and sleeper.poll() is None
        with pytest.raises(ConfigError, match="no job"):
            registry.stop("nonexistent")
    finally:
        for proc in (lookalike, sleeper):
            proc.kill()
            proc.wait()
        if is_our_process(real):
            os.kill(real.pid, 9)


@pytest.mark.parametrize(
    "argv",
    [[sys.executable, "-c", "import time; time.sleep(60)"], ["sleep", "60"],
     [sys.executable, "-m", "diffguide", "train", "--out", "/tmp"],
     [sys.executable, "-m", "diffguide", "train", "--out", "relative"],
     [sys.executable, "-m", "diffguide", "train"],
     [sys.executable, "-m", "tensorboard.main", "--logdir", "/"]],
)  # fmt: skip
def test_only_its_own_commands_are_started(tmp_path, argv):
    registry = JobRegistry(RunsFolder(tmp_path / "runs"))
    for action in ("train", "tensorboard"):
        with pytest.raises(ConfigError, match="the dashboard does not start this command"):
            registry.spawn("x", argv, action, {})
    assert registry.jobs(None) == []


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
