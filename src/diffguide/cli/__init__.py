"""The `diffguide` command: parses arguments and calls library functions (see each subcommand module)."""

from __future__ import annotations

import argparse
import sys

from ..errors import DiffguideError

# Each module registers its subcommands with add_parser(subparsers); order is the help order.
MODULES = ["core", "demo", "images", "dashboard", "likelihood"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="diffguide", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DiffguideError as e:
        print(f"diffguide {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
