"""The `diffguide` command: parses arguments and calls library functions (see each subcommand module)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

from diffguide.cli.common import apply_threads
from diffguide.cli.crash import report_internal_error
from diffguide.errors import DiffguideError, StoppedBySignal

# Each module registers its subcommands with add_parser(subparsers); order is the help order.
MODULES = [
    "core",
    "demo",
    "images",
    "dashboard",
    "likelihood",
    "export_diffusers",
    "posthoc",
    "guidance_bench",
    "tune_grid",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, reporting a bad command line in one line (no usage block), exit 2.

    Subcommand parsers are of the same class (add_subparsers' parser_class is the parent's type)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from diffguide import __version__

    parser = OneLineParser(
        prog="diffguide",
        description="Train, sample, guide and evaluate diffusion models. New here? Run `diffguide demo`, "
        "then `diffguide dashboard --runs out/demo`; `diffguide COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"diffguide {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit 0, 2 (bad input, one line), 1 (a bug: one line, traceback saved), 130/143."""
    try:
        args = build_parser().parse_args(argv)
    except Exception as e:  # argparse's own errors are SystemExit(2) and pass through
        return report_internal_error("diffguide", e, argv)
    prefix = f"diffguide {args.command}"
    try:
        return _run(args, prefix)
    except Exception as e:
        return report_internal_error(prefix, e, argv)


def _run(args, prefix: str) -> int:
    """args.func(args), with every expected failure turned into one line and its exit code."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # our warnings (a skipped bad checkpoint, ...) as one line a user reads, not a source location
        print(f"{prefix}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            apply_threads(args)
            return int(args.func(args) or 0)
    except StoppedBySignal as e:  # Ctrl-C / SIGTERM: the work done is kept; say where, exit 130 / 143
        print(f"{prefix}: {e}", file=sys.stderr)
        return e.exit_code
    except DiffguideError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in FILE_SYSTEM_ERRNOS:
            raise  # main() reports it as an internal error
        print(f"{prefix}: error: {file_system_error(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _out_of_memory(e):
            raise  # main() reports it as an internal error
        # the commands with their own advice (train, sample) raise DiffguideError instead
        print(f"{prefix}: error: out of memory ({e}); try a smaller --batch-size or --n", file=sys.stderr)
        return 2


# The machine's refusals, not bugs: a full disk or quota, a file over the size limit, a read-only file
# system, no permission. Every output is written atomically, so none leaves a half-written file.
FILE_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def file_system_error(e: OSError) -> str:
    """One line for a write the file system refused: the file, why, and what to do."""
    name = repr(str(e.filename)) if e.filename is not None else "a file"
    why = e.strerror or os.strerror(e.errno)
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no permission for {name} ({why}); choose another path (--out) or change its permissions"
    if e.errno == errno.EROFS:
        return f"cannot write {name}: {why}; choose another output path (--out)"
    return (
        f"cannot write {name}: {why}; nothing half-written was left in its place. Free some space or "
        "choose another output path (--out), then run the command again"
    )


def _out_of_memory(e: Exception) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, torch.OutOfMemoryError)
