"""Path checks for the dashboard: every run and file name that comes from the browser goes through here.

The dashboard reads and writes only inside its runs folder. A run is named by a relative id such as
`tiny` or `tree-edm/amateur` (a run folder nested one level, e.g. an autoguidance amateur kept
inside its expert's folder). Each part of an id must be a plain name: letters, digits, `.`, `_`, `-`,
not starting with `.` (so no `..`, no hidden folders such as the dashboard's own `.dashboard`), no
separators, no absolute paths. After joining, the resolved path must still lie inside the resolved
runs folder, which refuses symlinks that point out of it.

A run folder is also checked inside: every symlink anywhere below it (checkpoints/, metrics.jsonl,
samples.png, a checkpoint file, ...) must resolve inside the runs folder too, so nothing the dashboard
or a training process it launches reads or writes there leads out. The dashboard's own folder
(.dashboard: job registry, logs) is checked the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from diffguide.errors import DiffguideError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
MAX_DEPTH = 2  # a run id has at most this many parts ("expert/amateur")
STATE_DIR = ".dashboard"  # the dashboard's own files (job registry, training logs) inside the runs folder


class UnsafePath(DiffguideError):
    """A name from the browser would leave the runs folder or is not a plain name."""


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is one plain path part (see module doc), else UnsafePath saying what is allowed."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UnsafePath(
            f"refused {what} {name!r}: use 1-100 letters, digits, '.', '_' or '-', not starting with '.' "
            "(no '..', no '/', no absolute paths)"
        )
    return name


def split_run_id(run_id: str) -> list[str]:
    """'expert/amateur' -> ['expert', 'amateur'], each part checked; at most MAX_DEPTH parts."""
    if not isinstance(run_id, str) or not run_id:
        raise UnsafePath(f"refused run name {run_id!r}: it is empty")
    if run_id.startswith(("/", "\\")) or "\\" in run_id or re.match(r"^[A-Za-z]:", run_id):
        raise UnsafePath(f"refused run name {run_id!r}: absolute paths are not allowed, only run names")
    parts = run_id.split("/")
    for part in parts:
        if not NAME.fullmatch(part):
            raise UnsafePath(
                f"refused run name {run_id!r}: each part must be 1-100 letters, digits, '.', '_' or '-', "
                "not starting with '.' (no '..', no absolute paths)"
            )
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"refused run name {run_id!r}: at most {MAX_DEPTH} levels ('run' or 'run/sub')")
    return parts


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, lies inside `root` (also resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):  # RuntimeError: symlink loop
        return False
    return True


def escaping_link(root: Path, top: Path) -> Path | None:
    """The first symlink at or below `top` that resolves outside `root`, or None.

    Symlinked folders that stay inside are searched too (each real folder once, so loops end); a plain
    file or folder below a real folder inside `root` is inside by construction, so only links can escape.
    """
    if top.is_symlink() and not inside(root, top):
        return top
    seen: set[str] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not a folder, or unreadable: nothing below it to follow
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink() and not inside(root, path):
                return path
            if entry.is_dir():  # follows links that stay inside
                stack.append(path)
    return None


class RunsFolder:
    """The one folder the dashboard may touch; turns browser-supplied names into checked paths."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RunsFolder({str(self.root)!r})"

    def _checked(self, path: Path, shown: str) -> Path:
        if not inside(self.root, path):
            raise UnsafePath(f"refused {shown!r}: it points outside the runs folder {str(self.root)!r}")
        return path

    def checked_dir(self, path: Path, shown: str) -> Path:
        """`path` if it and every symlink below it stay inside the runs folder, else UnsafePath naming the
        link as `shown`/its path below `path` ("" shows the path below only)."""
        self._checked(path, shown)
        link = escaping_link(self.root, path)
        if link is not None:
            rel = "/".join(link.relative_to(path).parts)
            where = "/".join(part for part in (shown, rel) if part)
            raise UnsafePath(
                f"refused {where!r}: it is a symlink to {os.path.realpath(link)!r}, outside the runs folder "
                f"{str(self.root)!r}; replace the link by the files themselves"
            )
        return path

    def contains(self, path: Path) -> bool:
        """Whether checked_dir(path) would accept `path`."""
        try:
            self.checked_dir(path, str(path))
        except UnsafePath:
            return False
        return True

    def run_dir(self, run_id: str, must_exist: bool = True) -> Path:
        """The folder of run `run_id` (checked with everything below it); must hold config.json unless
        must_exist is False."""
        path = self.checked_dir(self.root.joinpath(*split_run_id(run_id)), run_id)
        if must_exist and not (path / "config.json").is_file():
            raise UnsafePath(
                f"no run named {run_id!r} in {str(self.root)!r} (a run folder holds config.json)"
            )
        return path

    def file(self, run_id: str, *names: str) -> Path:
        """A file inside a run folder, e.g. file('tiny', 'checkpoints', 'ckpt-00000060.safetensors')."""
        base = self.run_dir(run_id)
        path = base.joinpath(*(check_name(n, "file name") for n in names))
        return self._checked(path, "/".join((run_id, *names)))

    def state_dir(self) -> Path:
        """The dashboard's own folder (job registry, logs), created on first use; checked like a run."""
        path = self.root / STATE_DIR
        if path.is_symlink():
            raise UnsafePath(f"refused {str(path)!r}: it is a symlink; remove it")
        path.mkdir(parents=True, exist_ok=True)
        return self.checked_dir(path, STATE_DIR)

    def state_file(self, *names: str) -> Path:
        """A checked path inside the dashboard's own folder, e.g. state_file('logs', 'JOB.log')."""
        path = self.state_dir().joinpath(*(check_name(n, "file name") for n in names))
        return self._checked(path, "/".join((STATE_DIR, *names)))

    def run_ids(self) -> list[str]:
        """Ids of every run folder inside the runs folder (one or two levels deep), sorted."""
        found = []
        if not self.root.is_dir():
            return found
        for first in sorted(self.root.iterdir()):
            if not NAME.fullmatch(first.name) or not first.is_dir() or not inside(self.root, first):
                continue
            if (first / "config.json").is_file():
                found.append(first.name)
            for second in sorted(first.iterdir()):
                if (
                    NAME.fullmatch(second.name)
                    and second.is_dir()
                    and (second / "config.json").is_file()
                    and inside(self.root, second)
                ):
                    found.append(f"{first.name}/{second.name}")
        return found
