"""`diffguide dashboard`: start the Streamlit dashboard on a runs folder (see docs/dashboard.md)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from diffguide.cli.common import add_device_arg, device_of
from diffguide.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "dashboard",
        help="browse runs, train, generate and compare guidance in the browser (Streamlit)",
        description="Start the dashboard server and print its address. It reads and writes only inside "
        "the runs folder and only starts (and stops) `diffguide train` processes.",
    )
    p.add_argument("--runs", default="runs", help="runs folder (default: runs; after `make demo`: out/demo)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501; 0 picks a free one)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; anyone who can reach another "
        "address can launch training)",
    )
    add_device_arg(p)
    p.set_defaults(func=cmd_dashboard)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Raise a readable error when the port cannot be bound (in use, or a bad address)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535 (or 0 for a free one), got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({e.strerror}); choose another --port, e.g. --port 0 for a free one"
            ) from None


def server_command(app: Path, host: str, port: int) -> list[str]:
    """`python -m streamlit run app.py` with the settings the dashboard needs (no telemetry, no watcher)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "none",
        "--global.developmentMode", "false",
        "--theme.base", "light",
    ]  # fmt: skip


def cmd_dashboard(args) -> int:
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the dashboard needs Streamlit: pip install streamlit (or `make venv`, which installs it)"
        ) from None
    from diffguide.dashboard import app_path
    from diffguide.dashboard.ui import ENV_DEVICE, ENV_RUNS

    device = device_of(args)  # the pages load their models there
    runs = Path(args.runs).expanduser().absolute()
    if runs.exists() and not runs.is_dir():
        raise ConfigError(f"--runs {args.runs!r} is a file, not a folder")
    runs.mkdir(parents=True, exist_ok=True)
    port = free_port(args.host) if args.port == 0 else args.port
    check_port(args.host, port)
    env = {
        **os.environ, ENV_RUNS: str(runs), ENV_DEVICE: str(device), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"
    }  # fmt: skip
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"diffguide dashboard: http://{shown}:{port}  (runs folder: {runs}; device: {device}; Ctrl+C to stop)",
        flush=True,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach it can launch training", flush=True)
    proc = subprocess.Popen(server_command(app_path(), args.host, port), env=env)
    # SIGTERM to this command stops the server too (Ctrl+C reaches both through the terminal)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
