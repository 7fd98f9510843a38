"""Run every benchmark in this folder (bench_*.py), one subprocess each, and list the results written.

`make bench` runs this. Pass names to run a subset: `python benchmarks/run_all.py samplers training`.
`images` (the README's image results, about 75 min on 2 cores) runs only when named:
`python benchmarks/run_all.py images`.
Each benchmark prints a markdown table and writes it to benchmarks/results/<name>.md. Benchmarks are
not tests: they measure, they do not pass or fail (a failing benchmark is reported and the rest run).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPT_IN = {"images"}  # long end-to-end runs: only when asked for by name


def available() -> dict[str, Path]:
    return {p.stem[len("bench_") :]: p for p in sorted(HERE.glob("bench_*.py"))}


def main(argv: list[str]) -> int:
    benches = available()
    wanted = argv or [name for name in benches if name not in OPT_IN]
    unknown = [w for w in wanted if w not in benches]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choices: {', '.join(benches)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted:
        print(f"\n=== {name} ({benches[name].name}) ===", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(benches[name])], cwd=HERE.parent)
        print(f"=== {name}: exit {result.returncode} in {time.perf_counter() - start:.0f} s ===", flush=True)
        if result.returncode != 0:
            failed.append(name)
    print(
        "\nresults:",
        *sorted(str(p.relative_to(HERE.parent)) for p in (HERE / "results").glob("*.md")),
        sep="\n  ",
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
