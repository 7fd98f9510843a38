"""The `diffguide` command: parses arguments and calls library functions (see each subcommand module)."""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from diffguide import __version__

    parser = argparse.ArgumentParser(
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
    except Exception as e:
        if not _out_of_memory(e):
            raise  # main() reports it as an internal error
        # the commands with their own advice (train, sample) raise DiffguideError instead
        print(f"{prefix}: error: out of memory ({e}); try a smaller --batch-size or --n", file=sys.stderr)
        return 2


def _out_of_memory(e: Exception) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, torch.OutOfMemoryError)
