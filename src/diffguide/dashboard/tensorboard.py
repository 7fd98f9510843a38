"""TensorBoard on the runs folder, started by the dashboard as one of its jobs (checked like training).

`python -m tensorboard.main --logdir RUNS --host 127.0.0.1 --port FREE` is recorded in jobs.json with
its token (see jobs.py), so the Runs page finds it again after a reload and can stop it, and nothing
else. It listens on this machine's loopback address only, whatever address the dashboard serves on.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import urllib.request

from diffguide.dashboard.jobs import Job, JobRegistry, is_our_process
from diffguide.errors import ConfigError

HOST = "127.0.0.1"
ACTION = "tensorboard"


def command(registry: JobRegistry, port: int) -> list[str]:
    """The TensorBoard server command on the registry's runs folder."""
    root = str(registry.folder.root)
    return [sys.executable, "-m", "tensorboard.main", "--logdir", root, "--host", HOST, "--port", str(port)]


def running(registry: JobRegistry) -> Job | None:
    """The TensorBoard this dashboard started on the runs folder, if it is still running."""
    return next(iter(registry.running((ACTION,))), None)


def url(job: Job) -> str:
    return f"http://{HOST}:{int(job.extra['port'])}/"


def answers(address: str, timeout: float = 1.0) -> bool:
    """Whether an HTTP GET of `address` returns 200 (no proxy: the server is on this machine)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(address, timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def start(registry: JobRegistry, timeout: float = 60.0) -> Job:
    """Start TensorBoard on a free loopback port (or return the running one) and wait until it answers."""
    job = running(registry)
    if job is not None:
        return job
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("TensorBoard is not installed here: pip install tensorboard")
    from diffguide.cli.dashboard import free_port

    # TensorBoard reads every event file below the folder: no link there may lead out of it
    registry.folder.checked_dir(registry.folder.root, "")
    port = free_port(HOST)
    job = registry.spawn("", command(registry, port), ACTION, {"port": port})
    deadline = time.time() + timeout
    while not answers(url(job)):
        if not is_our_process(job):
            tail = registry.log_tail(job, 4) or "(no output)"
            raise ConfigError(f"TensorBoard exited before answering on {url(job)}; its log ends:\n{tail}")
        if time.time() > deadline:
            registry.stop(job.id)
            raise ConfigError(f"TensorBoard did not answer on {url(job)} within {timeout:g} s; stopped it")
        time.sleep(0.2)
    return job


def stop(registry: JobRegistry, job: Job, timeout: float = 10.0) -> None:
    """SIGTERM the dashboard's TensorBoard and wait (up to `timeout` s) for it to exit."""
    registry.stop(job.id)
    deadline = time.time() + timeout
    while is_our_process(job) and time.time() < deadline:
        time.sleep(0.1)
