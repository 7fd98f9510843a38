"""Background processes started by the dashboard (training, TensorBoard), and the only ones it may stop.

A job is `python -m diffguide train ... --out RUNS` (or `python -m tensorboard.main --logdir RUNS`)
started with its output in a log file. Every job is recorded in RUNS/.dashboard/jobs.json: id, run,
PID, the exact command line, the process start time read from /proc and the SHA-256 of a random token
put only in the process's environment (DIFFGUIDE_DASHBOARD_JOB). Before signalling, the recorded PID
must still be that very process: same start time, same command line, a command the dashboard starts
(`sys.executable -m diffguide train` with its --out inside the runs folder, or TensorBoard on it), and
the token in /proc/PID/environ. jobs.json is a plain file anyone who can write the runs folder can
edit, but a forged entry cannot name a process that holds a token it never received, so a PID reused
by, or pointed at, an unrelated program is never signalled. Where /proc does not exist, only processes
this dashboard process started itself (their Popen handles) can be stopped.

Stopping sends SIGTERM: the training loop checkpoints the current step and exits ("stopped at step
N"); the run can then be resumed with --resume (`resume()` here).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diffguide.config import RunConfig, apply_overrides, load_preset, preset_names
from diffguide.dashboard.safety import RunsFolder, check_name, inside
from diffguide.errors import ConfigError, DiffguideError, unknown
from diffguide.io import atomic_write_text
from diffguide.models.runs import load_config
from diffguide.train.checkpoint import list_checkpoints

# Popen handles of the processes started by this Python process (the Streamlit server): lets us
# reap them and read their exit codes; module state survives Streamlit's script reruns.
_HANDLES: dict[int, subprocess.Popen] = {}

TOKEN_ENV = "DIFFGUIDE_DASHBOARD_JOB"  # the per-job random token, in the job's environment only
# what each kind of job runs (`sys.executable` then these arguments), and the option naming the folder
# it works in, which must lie inside the runs folder
COMMANDS = {
    "train": (["-m", "diffguide", "train"], "--out"),
    "resume": (["-m", "diffguide", "train"], "--out"),
    "tensorboard": (["-m", "tensorboard.main"], "--logdir"),
}
TRAINING = ("train", "resume")


@dataclass
class Job:
    """A training process launched by the dashboard."""

    id: str
    run: str
    pid: int
    argv: list[str]
    start_ticks: int | None  # /proc/PID/stat start time, None where /proc does not exist
    started: float
    log: str  # file name inside RUNS/.dashboard/logs
    action: str = "train"  # train | resume | tensorboard (a key of COMMANDS)
    stop_requested: float = 0.0
    extra: dict = field(default_factory=dict)
    token_sha256: str = ""  # SHA-256 of the random token in the process's environment
    root: str = ""  # the runs folder of the registry that read this job (set on reading, never saved)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None  # field 22 of stat(5)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _environ_token(pid: int) -> str | None:
    """The value of TOKEN_ENV in the environment process `pid` was started with, or None."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's process
        return None
    prefix = TOKEN_ENV.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def have_proc() -> bool:
    return Path("/proc/self/stat").is_file()


def command_problem(argv: list[str], action: str, root: Path) -> str | None:
    """Why `argv` is not a command the dashboard starts for `action` in runs folder `root`; None if it is."""
    if action not in COMMANDS:
        return f"unknown job kind {action!r}; choices: {', '.join(COMMANDS)}"
    args, folder_option = COMMANDS[action]
    expected = [sys.executable, *args]
    if list(argv[: len(expected)]) != expected:
        return f"command {argv[: len(expected)]} is not {expected}"
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == folder_option]
    if len(values) != 1 or not Path(values[0]).is_absolute() or not inside(root, Path(values[0])):
        return (
            f"its {folder_option} must be one absolute folder inside the runs folder {str(root)!r}, "
            f"got {values}"
        )
    return None


def is_our_process(job: Job, root: str | Path | None = None) -> bool:
    """Whether job.pid is still the very process the dashboard started (and has not exited).

    `root` is the runs folder (default: that of the registry the job was read from).
    """
    handle = _HANDLES.get(job.pid)
    if handle is not None and handle.poll() is not None:
        return False  # exited (and now reaped)
    if not have_proc():
        return handle is not None  # no /proc: only processes started by this very server
    fields = _proc_stat(job.pid)
    if fields is None or fields[0] in ("Z", "X"):  # gone, or a zombie not yet reaped
        return False
    if _start_ticks(job.pid) != job.start_ticks or _cmdline(job.pid) != job.argv:
        return False
    root = root or job.root
    if not root or command_problem(job.argv, job.action, Path(root)) is not None:
        return False
    token = _environ_token(job.pid)
    return (
        token is not None
        and bool(job.token_sha256)
        and hmac.compare_digest(token_sha256(token), job.token_sha256)
    )


class JobRegistry:
    """The jobs of one runs folder (RUNS/.dashboard/jobs.json)."""

    def __init__(self, folder: RunsFolder):
        self.folder = folder

    @property
    def path(self) -> Path:
        return self.folder.state_file("jobs.json")

    def log_dir(self) -> Path:
        path = self.folder.state_file("logs")
        path.mkdir(exist_ok=True)
        return path

    def jobs(self, actions: tuple[str, ...] | None = TRAINING) -> list[Job]:
        """Recorded jobs of these kinds (None: all), newest first (an unreadable registry reads as empty)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return []
        out = []
        for item in data.get("jobs", []):
            try:
                job = Job(**item)
            except TypeError:
                continue
            job.root = str(self.folder.root)  # whatever the file says
            if actions is None or job.action in actions:
                out.append(job)
        return sorted(out, key=lambda j: j.started, reverse=True)

    def _save(self, jobs: list[Job]) -> None:
        items = [{k: v for k, v in asdict(j).items() if k != "root"} for j in jobs]
        atomic_write_text(self.path, json.dumps({"jobs": items}, indent=1) + "\n")

    def get(self, job_id: str) -> Job:
        for job in self.jobs(None):
            if job.id == job_id:
                return job
        raise ConfigError(f"no job {job_id!r} was started from this dashboard")

    def running(self, actions: tuple[str, ...] | None = TRAINING) -> list[Job]:
        return [j for j in self.jobs(actions) if is_our_process(j)]

    def running_for(self, run: str) -> Job | None:
        return next((j for j in self.running() if j.run == run), None)

    # -- launching -------------------------------------------------------------------------------

    def spawn(self, run: str, argv: list[str], action: str, extra: dict) -> Job:
        """Start `argv` (a command of COMMANDS[action]) in the background and record it in jobs.json."""
        problem = command_problem(argv, action, self.folder.root)
        if problem is not None:
            raise ConfigError(f"the dashboard does not start this command: {problem}")
        if action in TRAINING and self.running_for(run) is not None:
            raise ConfigError(f"run {run!r} is already training; stop it first")
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        log_name = f"{job_id}.log"
        token = secrets.token_hex(32)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: token}
        self.log_dir()
        with open(self.folder.state_file("logs", log_name), "w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            # own session: Ctrl+C on the dashboard does not kill training; stop it from the Train page
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder.root,
                env=env,
                start_new_session=True,
            )
        _HANDLES[proc.pid] = proc
        ticks = None
        for _ in range(50):  # /proc/PID/cmdline is empty for a moment after fork
            ticks = _start_ticks(proc.pid)
            if (
                not have_proc()
                or (ticks is not None and _cmdline(proc.pid) == argv)
                or proc.poll() is not None
            ):
                break
            time.sleep(0.01)
        job = Job(job_id, run, proc.pid, argv, ticks, time.time(), log_name, action, extra=extra)
        job.token_sha256 = token_sha256(token)
        self._save([job, *self.jobs(None)][:100])
        job.root = str(self.folder.root)
        return job

    def launch(self, preset: str, run: str, overrides: list[str], extra_flags: list[str] = ()) -> Job:
        """Start `python -m diffguide train --preset P --out RUNS --name RUN --set ...` in the background.

        The preset, the run name and the overrides are checked here first, so a bad value is reported
        at once instead of in the log of a failed process.
        """
        if preset not in preset_names():
            raise unknown("preset", preset, preset_names())
        check_name(run, "run name")
        cfg = apply_overrides(load_preset(preset), overrides)  # raises ConfigError on a bad value
        run_dir = self.folder.run_dir(run, must_exist=False)  # refuses links out anywhere below it
        if list_checkpoints(run_dir / "checkpoints"):
            raise ConfigError(
                f"run {run!r} already exists with checkpoints; choose another name, or resume it below"
            )
        allowed = train_flags()
        for flag in extra_flags:
            if flag not in allowed:
                raise ConfigError(f"option {flag!r} is not an option of `diffguide train` here")
            if flag in GUIDE_FOLDERS:  # the guide trained next to the run is written there: check it too
                self.folder.run_dir(run + GUIDE_FOLDERS[flag], must_exist=False)
        argv = [
            sys.executable,
            "-m",
            "diffguide",
            "train",
            "--preset",
            preset,
            "--out",
            str(self.folder.root),
        ]
        argv += ["--name", run, "--no-progress"]
        for item in overrides:
            argv += ["--set", item]
        argv += list(extra_flags)
        return self.spawn(run, argv, "train", {"preset": preset, "steps": cfg.train.steps})

    def resume(self, run: str) -> Job:
        """Continue a stopped run from its latest good checkpoint (`train --config run/config.json --resume`)."""
        run_dir = self.folder.run_dir(run)  # refuses links out anywhere below it
        config = self.folder.file(run, "config.json")
        if not list_checkpoints(run_dir / "checkpoints"):
            raise ConfigError(f"run {run!r} has no checkpoint to resume from")
        saved_name = load_config(run_dir).name
        if saved_name != run_dir.name:
            raise ConfigError(
                f"run folder {run!r} holds a run named {saved_name!r}; resume it from the command line: "
                f"diffguide train --config {config} --out OUT --resume"
            )
        argv = [sys.executable, "-m", "diffguide", "train", "--config", str(config)]
        argv += ["--out", str(run_dir.parent), "--resume", "--no-progress"]
        return self.spawn(run, argv, "resume", {})

    # -- stopping --------------------------------------------------------------------------------

    def stop(self, job_id: str) -> Job:
        """SIGTERM a job after checking it is still the process we started (see is_our_process); the
        training loop checkpoints and exits."""
        job = self.get(job_id)
        if not is_our_process(job):
            raise ConfigError(
                f"job {job_id} (run {job.run!r}, PID {job.pid}) is not running any more; nothing to stop"
            )
        os.kill(job.pid, signal.SIGTERM)
        jobs = self.jobs(None)
        for j in jobs:
            if j.id == job_id:
                j.stop_requested = time.time()
        self._save(jobs)
        return job

    # -- reporting -------------------------------------------------------------------------------

    def log_tail(self, job: Job, lines: int = 12) -> str:
        try:
            text = self.folder.state_file("logs", check_name(job.log, "log name")).read_text(errors="replace")
        except (OSError, DiffguideError):
            return ""
        # tqdm-style carriage returns: keep each line's last state
        rows = [row.split("\r")[-1] for row in text.splitlines()]
        return "\n".join(rows[-lines:])

    def status(self, job: Job) -> str:
        """running | stopping | stopped | finished | failed."""
        if is_our_process(job):
            return "stopping" if job.stop_requested else "running"
        log = self.log_tail(job, 40)
        if "stopped at step" in log:
            return "stopped"
        if "run written to" in log or "is already finished" in log:
            return "finished"
        handle = _HANDLES.get(job.pid)
        if job.stop_requested and (handle is None or handle.returncode in (-signal.SIGTERM, 130, 143)):
            return "stopped"
        return "failed"


GUIDE_FOLDERS = {"--with-amateur": "-amateur", "--with-classifier": "-classifier"}  # RUNS/NAME + suffix


def train_flags() -> set[str]:
    """The option strings `diffguide train` accepts (some are added by other features, e.g. --with-amateur)."""
    import argparse

    from diffguide.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices.get("train")
            if sub is not None:
                return {s for a in sub._actions for s in a.option_strings}
    return set()


def check_overrides_preview(preset: str, overrides: list[str]) -> RunConfig:
    """The config a launch would train (for showing errors before launching)."""
    if preset not in preset_names():
        raise unknown("preset", preset, preset_names())
    return apply_overrides(load_preset(preset), overrides)
