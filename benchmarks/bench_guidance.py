"""The guidance benchmark, full size: every method of `diffguide.guidance.spec.METHODS` swept over its
weights on the 2D tree and on 8 Gaussians, scored with the exact metrics (`diffguide.study.guidance_bench`).

Writes benchmarks/results/guidance.md (the tables), benchmarks/results/guidance.json (metrics.json) and
docs/img/guidance_bench.png (the precision-coverage curves). The runs and samples go to a temporary
folder, or to `--out DIR` to keep them. `diffguide guidance-bench` runs the fast version.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from diffguide.study.experiment import StudySettings  # noqa: E402
from diffguide.study.guidance_bench import BenchSettings, run_benchmark, write_report  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FIGURE = ROOT / "docs" / "img" / "guidance_bench.png"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep the runs and samples here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = BenchSettings(study=StudySettings(seed=args.seed, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "guidance-bench"
        metrics = run_benchmark(out, settings)
        shutil.copyfile(out / "guidance_bench.png", FIGURE)
        shutil.copyfile(out / "metrics.json", RESULTS / "guidance.json")
    report = write_report(RESULTS / "guidance.md", metrics, "../../docs/img/guidance_bench.png")
    with report.open("a") as f:  # the reading is written by hand, next to the docs it explains
        f.write(
            "\nWhat these numbers show: [docs/guidance.md](../../docs/guidance.md#the-guidance-benchmark).\n"
        )
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
