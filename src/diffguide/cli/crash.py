"""An unexpected exception (a bug, not a bad input): one line for the user, the traceback in a file.

The report goes to <cache folder>/crashes/ (the cache folder of data/cache.py: $DIFFGUIDE_CACHE, else
$XDG_CACHE_HOME/diffguide, else ~/.cache/diffguide), else to the system's temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

EXIT_INTERNAL_ERROR = 1


def report_internal_error(prefix: str, error: BaseException, argv: list[str] | None) -> int:
    """Save the traceback of `error`, print one line naming the error and the file, return exit code 1."""
    what = f"{type(error).__name__}: {_one_line(str(error))}"
    text = _report_text(error, argv)
    saved = _save(text)
    where = f"details saved in {saved}" if saved is not None else "no file could be written for the details"
    print(f"{prefix}: internal error: {what}; {where}; please report it", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def _one_line(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _report_text(error: BaseException, argv: list[str] | None) -> str:
    from diffguide import __version__

    argv = sys.argv[1:] if argv is None else argv
    header = [
        f"diffguide {__version__}, Python {sys.version.split()[0]}, {sys.platform}",
        f"command: diffguide {' '.join(argv)}",
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        "",
    ]
    body = traceback.format_exception(type(error), error, error.__traceback__)
    return "\n".join(header) + "".join(body)


def crash_folders() -> list[Path]:
    """Where a report is written, in order of preference."""
    folders = [Path(tempfile.gettempdir())]
    try:
        from diffguide.data.cache import cache_dir  # here: the parser stays free of numpy

        folders.insert(0, cache_dir() / "crashes")
    except Exception:  # the report must not fail because of the bug it reports
        pass
    return folders


def _save(text: str) -> Path | None:
    name = f"diffguide-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for folder in crash_folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None
