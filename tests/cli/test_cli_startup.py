"""`diffguide --help` and argument errors answer without importing torch (issue 15: <= 0.3 s; the
timing itself is benchmarks/bench_cli.py). Each check runs in a fresh interpreter: this test
process has imported torch long ago."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "scipy", "safetensors", "tqdm", "matplotlib", "PIL")

PROBE = """
import contextlib, io, json, sys
from diffguide.cli import MODULES, build_parser
parser = build_parser()
for argv in {argvs}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit:
            pass
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def loaded_after(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_parser_help_and_argument_errors_import_no_torch():
    """Building the parser (every module's add_parsers), --help of the program and of each command,
    and argument errors leave torch, numpy, scipy, tqdm, ... unimported."""
    from diffguide.cli import build_parser

    commands = [a for a in build_parser()._subparsers._group_actions[0].choices]
    argvs = [["--help"], ["--version"], ["sample", "--no-such-flag"], ["train"]]
    argvs += [[c, "--help"] for c in commands]
    assert len(commands) >= 10
    assert loaded_after(PROBE.format(argvs=repr(argvs), heavy=repr(HEAVY))) == []


def test_import_diffguide_is_lazy_and_its_exports_still_work():
    """`import diffguide` imports no torch; its names load on first use."""
    code = f"""
import json, sys
import diffguide
before = sorted(m for m in {HEAVY!r} if m in sys.modules)
assert "heun" in diffguide.SAMPLERS and callable(diffguide.append_dims)
assert sorted(diffguide.__all__) == sorted(n for n in dir(diffguide) if n in diffguide.__all__)
try:
    diffguide.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
print(json.dumps(before))
"""
    assert loaded_after(code) == []


def test_guidance_names_in_the_help_are_the_registry():
    """cli/guidance_args.py lists the guidance methods for --help without importing the registry
    (which imports torch): the list must be guidance.spec.METHODS, in order."""
    from diffguide.cli.guidance_args import METHOD_NAMES
    from diffguide.guidance.spec import METHODS

    assert tuple(METHODS) == METHOD_NAMES


def test_tune_grid_method_names_are_the_tuners():
    from diffguide.cli.tune_grid import METHOD_NAMES
    from diffguide.samplers.tuning import METHODS

    assert tuple(METHODS) == METHOD_NAMES
