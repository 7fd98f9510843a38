"""Path checks for the dashboard: every run and file name that comes from the browser goes through here.

The dashboard reads and writes only inside its runs folder. A run is named by a relative id such as
`tiny` or `tree-edm/amateur` (a run folder nested one level, e.g. an autoguidance amateur kept
inside its expert's folder). Each part of an id must be a plain name: letters, digits, `.`, `_`, `-`,
not starting with `.` (so no `..`, no hidden folders such as the dashboard's own `.dashboard`), no
separators, no absolute paths. After joining, the resolved path must still lie inside the resolved
runs folder, which refuses symlinks that point out of it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DiffguideError

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

    def run_dir(self, run_id: str, must_exist: bool = True) -> Path:
        """The folder of run `run_id`; must hold config.json unless must_exist is False."""
        path = self._checked(self.root.joinpath(*split_run_id(run_id)), run_id)
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
        """The dashboard's own folder (job registry, logs), created on first use."""
        path = self.root / STATE_DIR
        if path.is_symlink():
            raise UnsafePath(f"refused {str(path)!r}: it is a symlink; remove it")
        path.mkdir(parents=True, exist_ok=True)
        return self._checked(path, STATE_DIR)

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
