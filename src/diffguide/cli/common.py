"""Helpers shared by the command-line commands: output folders, JSON files, grid overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffguide.errors import ConfigError, output_error
from diffguide.io import atomic_write_text

# Every JSON a command writes records which command wrote it, so a later run may replace it
# without --force while a file the command did not write is never replaced by accident.
WRITTEN_BY = "written_by"
# A run folder holds config.json and checkpoints/; these are its own files, never outputs of a command.
RUN_FILES = ("config.json", "checkpoints")


def add_threads_arg(p) -> None:
    """--threads N: torch's intra-op thread count for the command (train, sample, eval, likelihood,
    tune-grid)."""
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch's intra-op threads (torch.set_num_threads; default: torch's, usually one per core); "
        "train records it in metrics.jsonl",
    )


def add_device_arg(p) -> None:
    """--device: where the command's network runs (sample, eval, likelihood, tune-grid, ...)."""
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (default: the GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps; "
        "the noise is drawn on the CPU, so devices agree up to float rounding",
    )


def device_of(args):
    """The torch device of --device, checked (name, then whether this machine has it) before any file
    is written: one line naming --device, the devices there are and the fix."""
    from diffguide.config.validate import check_device_name
    from diffguide.train.devices import resolve_device

    check_device_name(args.device, "--device")
    return resolve_device(args.device, flag="--device")


def conditions_to(cond, device):
    """A condition (None, a class, labels, or a dict of per-sample tensors) with its tensors on
    `device` (generate moves plain labels itself, not a dict's)."""
    import torch

    if isinstance(cond, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in cond.items()}
    return cond.to(device) if torch.is_tensor(cond) else cond


def add_force_flag(p, command: str, help: str | None = None) -> None:
    """--force: replace an existing output that `command` did not write (see docs/bad-input.md)."""
    p.add_argument(
        "--force",
        action="store_true",
        help=help or f"replace an existing output file that `{command}` did not write",
    )


def apply_threads(args) -> None:
    """Set torch's thread count from --threads when the command has it and it was given (N >= 1)."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be an integer >= 1, got {threads}")
    import torch  # here, not at the top: building the parser imports no torch (fast --help)

    torch.set_num_threads(threads)


def make_output_folder(out: Path) -> None:
    """Create the folder `out` goes in; an unwritable place is our error naming the path and why."""
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None


def write_json(out: Path, data, written_by: str | None = None) -> None:
    """Write `data` as indented JSON to `out` (atomically), creating its folder.

    written_by: the command ("diffguide eval"), recorded in the file as its first key."""
    if written_by is not None:
        data = {WRITTEN_BY: written_by, **data}
    make_output_folder(out)
    try:
        atomic_write_text(Path(out), json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise output_error(out, e) from None


def json_writer(path: Path, legacy_keys: tuple[str, ...] = ()) -> str | None:
    """The command recorded in the JSON file `path`, or None (not JSON, not ours, unreadable).

    legacy_keys: keys that mark the file as the caller's own output from before `written_by` existed;
    such a file counts as written by "legacy"."""
    try:
        if path.stat().st_size > 2**24:  # our outputs are small; do not read a big file to find out
            return None
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get(WRITTEN_BY), str):
        return data[WRITTEN_BY]
    return "legacy" if legacy_keys and all(k in data for k in legacy_keys) else None


def run_folder_of(path: Path) -> tuple[Path, Path] | None:
    """(run folder, path inside it) when `path` lies in a run folder (config.json + checkpoints/).

    Looked up as written (for messages), then with links and '..' resolved (a link into a run)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a loop of links: look it up as written only
        resolved = path
    for form in (path, resolved):
        for folder in form.parents:
            if (folder / "config.json").is_file() and (folder / "checkpoints").is_dir():
                return folder, form.relative_to(folder)
    return None


def check_json_output(
    out: Path, command: str, *, force: bool = False, example: str = "results.json", legacy_keys=()
) -> Path:
    """Refuse, before any work starts, a JSON --out that would replace what `command` did not write.

    Refused: a suffix other than .json, a folder, a path under a file, an unwritable place; a run's
    own file (config.json, checkpoints/..., anything in a run folder that no diffguide command wrote),
    even with --force; an existing file that `command` did not write, unless force.
    """
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ConfigError(
            f"--out {str(out)!r} must end in .json (this command writes JSON); e.g. --out {example}"
        )
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a .json file, e.g. --out {out / example}")
    check_writable_place(out)
    in_run = run_folder_of(out)
    writer = json_writer(out, legacy_keys) if out.is_file() else None
    if in_run is not None:
        run, inside = in_run
        if inside.parts[0] in RUN_FILES or (out.exists() and writer is None):
            what = "is a file of" if out.exists() else "would write into"
            raise ConfigError(
                f"--out {str(out)!r} {what} run {str(run)!r} ({inside.as_posix()}); a run's own files are "
                f"never replaced, not even with --force: choose another path, e.g. --out {run / example}"
            )
    if out.exists() and not force and writer not in (f"diffguide {command}", "legacy"):
        raise ConfigError(
            f"--out {str(out)!r} exists and was not written by `diffguide {command}`; choose another path, "
            "or add --force to replace it"
        )
    return out


def check_writable_place(out: Path) -> None:
    """A path under a file, or in a folder we cannot write to: our error now, not after the work."""
    existing = next(p for p in out.absolute().parents if p.exists())  # the root always exists
    if not existing.is_dir():
        raise output_error(out, NotADirectoryError())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise output_error(out, PermissionError(13, "permission denied"))


def grid_overrides(args, sample_config=None) -> tuple:
    """(sigma_min, sigma_max, rho) for sigma_grid: the command line's where given, else the run's."""
    s = sample_config

    def pick(name, default):
        value = getattr(args, name, None)
        return value if value is not None else (getattr(s, name) if s is not None else default)

    return pick("sigma_min", None), pick("sigma_max", None), pick("rho", 7.0)


SAMPLE_ARRAYS = ({"samples"}, {"samples", "labels"})  # what `diffguide sample` writes in a .npz


def written_by_us(path: Path, command: str) -> bool:
    """Whether the existing file `path` is an earlier output that `diffguide COMMAND` may replace.

    A JSON file records its command (written_by); a PNG or GIF records diffguide (io.SOFTWARE_TAG) in
    its text or comment; a .npz is ours when it holds exactly the arrays `sample` writes."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json_writer(path) == f"diffguide {command}"
    try:
        if suffix in (".png", ".gif"):
            from PIL import Image

            from diffguide.io import SOFTWARE_TAG

            with Image.open(path) as image:
                tag = image.info.get("Software") if suffix == ".png" else image.info.get("comment")
            return tag in (SOFTWARE_TAG, SOFTWARE_TAG.encode())
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as arrays:
                return set(arrays.files) in SAMPLE_ARRAYS
    except Exception:  # not an image / archive we can read: not ours
        return False
    return False


def check_outputs(out: Path, companions: list[Path], command: str, force: bool) -> None:
    """check_replaceable for --out and each file written beside it (a scatter plot, a GIF, ...)."""
    check_replaceable(out, command, force)
    for path in companions:
        check_replaceable(path, command, force, what=f"{str(path)!r}, written with --out")


def check_replaceable(path: Path, command: str, force: bool, what: str = "--out") -> None:
    """Refuse, before any work, to replace an existing file `command` did not write, unless --force."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{_named(what, path)} is a folder; give a file path")
    if path.exists() and not force and not written_by_us(path, command):
        raise ConfigError(
            f"{_named(what, path)} exists and was not written by `diffguide {command}`; choose another "
            "path, or add --force to replace it"
        )


def _named(what: str, path: Path) -> str:
    """'--out 'x.npz'' for --out itself; the companion's own description (which names it) otherwise."""
    return f"{what} {str(path)!r}" if what == "--out" else what
