"""Grids tuned to the model (diffguide.samplers.tuning) against fixed grids and the peers' best samplers.

For the exact denoisers (float64) of the tree mixture and of 8 Gaussians, from the same noise as
bench_peers.py (x = 80 z, 2000 points, torch.randn seed 0), the RMS distance to a 1024-step Heun solution
(Karras grid) from the same x, at 4, 8, 16 and 32 denoiser evaluations (NFE):
  - our samplers on the Karras (rho 7), log-linear and uniform-in-sigma (rho 1) grids 0.002..80;
  - the same samplers on grids tuned by `tune_grid` for that mixture, sampler and NFE: the GITS grid
    (Chen et al. 2024) and the grid the default method keeps (GITS, then a direct search; see the
    module docstring of diffguide.samplers.tuning; TUNING_SAMPLES draws), with the tuning time in seconds. Tuning sees other
    noise (PerSampleNoise streams of seed 0) than the benchmark, so the errors here are out of sample;
  - the best row of k-diffusion and of diffusers at each NFE: bench_peers.accuracy() on the same mixture
    in this same run (every deterministic sampler of each library on both grids it can run).
The same table for a trained run ("tree-run": the demo's expert, preset demo-expert trained here, its
network in float64 without condition). Goal (issue 16): the tuned grid's error <= 0.5 x the best
peer's at every NFE.

The digits part ("digits", benchmarks/grids_runs.py): digits-cfg trained here, classifier-feature FID,
KID, precision/recall and accuracy of class-conditional samples at NFE 8 and 16, tuned vs Karras grid.

Usage: python benchmarks/bench_grids.py [--quick] [--samplers ipndm,unipc]
           [--parts tree,8gaussians,tree-run,digits] [--work DIR] [--reuse]
Writes results/grids.md (--quick: results/grids-quick.md). One torch thread (a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import bench_peers as peers
import grids_runs
import torch

from diffguide.grids import karras_sigmas, loglinear_sigmas
from diffguide.mixtures import eight_gaussians, tree_mixture
from diffguide.samplers import get_sampler, sample_heun, steps_for_evals
from diffguide.samplers.tuning import tune_grid

SIGMA_MIN, SIGMA_MAX = peers.SIGMA_MIN, peers.SIGMA_MAX
BUDGETS = peers.BUDGETS
MIXTURES = {"tree": tree_mixture, "8gaussians": eight_gaussians}
PARTS = (*MIXTURES, "tree-run", "digits")
# tuning draws of the 2D parts (tune-grid's default is 256): the RMS over 2000 points is dominated by
# the few that start near the tree's branchings; 256 draws missed them at NFE 32 (docs/samplers.md)
TUNING_SAMPLES = 512
RESULTS = Path(__file__).parent / "results" / "grids.md"
FIXED = {
    "Karras rho 7": lambda steps: karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, 7.0),
    "log-linear": lambda steps: loglinear_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
    "uniform in sigma": lambda steps: karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, 1.0),
}


def noise_and_reference(mixture, n_points: int, ref_steps: int, seed: int = 0):
    """bench_peers' starting points and reference: x = 80 z (torch.randn, seed), Heun on Karras."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_points, 2, generator=generator, dtype=torch.float64) * SIGMA_MAX
    return x, sample_heun(mixture, x, karras_sigmas(ref_steps, SIGMA_MIN, SIGMA_MAX))


def run_cell(mixture, sampler: str, x, reference, sigmas) -> tuple[int, float]:
    """(denoiser evaluations used, RMS distance to the reference) of one sampler on one grid."""
    counted = peers.Counted(mixture)
    out = get_sampler(sampler)(counted, x.clone(), sigmas)
    return counted.calls, float((out - reference).pow(2).sum(1).mean().sqrt())


TUNED = {  # row label: the tuner's candidate
    "tuned: GITS": "gits",
    "tuned: direct search (Karras family, shape, levels)": "direct",
    "tuned: direct search from the GITS grid": "gits+direct",
}
KEPT = "tuned: kept (lowest validation error)"


def our_rows(mixture, samplers, x, reference, tune_kwargs) -> list:
    """[(sampler, grid label, {budget: (nfe, error, tuning seconds or None)})].

    One tune_grid call (method gits+direct) per sampler and budget gives every tuned row: its
    candidates are GITS, the direct search from the Karras family and from GITS; the seconds are the
    whole call's (references, GITS and all searches)."""
    rows = []
    for sampler in samplers:
        cells = {label: {} for label in [*FIXED, *TUNED, KEPT]}
        for budget in BUDGETS:
            steps = steps_for_evals(sampler, budget)
            for label, grid in FIXED.items():
                cells[label][budget] = (*run_cell(mixture, sampler, x, reference, grid(steps)), None, None)
            result = tune_grid(mixture, (2,), sampler, budget, **tune_kwargs)
            tuned = {label: result.grids[name] for label, name in TUNED.items()}
            tuned[KEPT] = result.sigmas
            for label, sigmas in tuned.items():
                cell = run_cell(mixture, sampler, x, reference, sigmas)
                cells[label][budget] = (*cell, result.seconds, result.chosen if label == KEPT else None)
            print(f"  {sampler} NFE {budget}: kept {result.chosen}, {result.seconds:.0f} s", file=sys.stderr)
        rows += [(sampler, label, by_budget) for label, by_budget in cells.items()]
    return rows


def best_peers(peer_rows) -> dict[int, tuple[float, str, int]]:
    """Per budget: (error, 'library sampler', nfe) of the most accurate k-diffusion or diffusers row."""
    best = {}
    for budget in BUDGETS:
        cells = [
            (cells[budget][1], f"{library} {name}", cells[budget][0])
            for library, name, cells in peer_rows
            if library != "diffguide" and budget in cells
        ]
        best[budget] = min(cells) if cells else (math.inf, "none", 0)
    return best


def cell_text(nfe: int, error: float, budget: int, seconds=None) -> str:
    text = f"{error:.2e}" + (f" ({nfe})" if nfe != budget else "")
    return text + (f", {seconds:.0f} s" if seconds is not None else "")


def mixture_section(name: str, rows, peer_best, ref_error: float, n_points: int, ref_steps: int) -> list[str]:
    lines = [
        f"## {name}",
        "",
        f"RMS distance to the {ref_steps}-step Heun solution from the same noise ({n_points} points; the "
        f"reference moves by {ref_error:.1e} when its steps are doubled). NFE used in brackets where it "
        "differs from the budget; for tuned grids, the tuning time (seconds, one thread) after the comma.",
        "",
        "| sampler | grid | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " |",
        "|---|---|" + "---:|" * len(BUDGETS),
    ]
    for sampler, label, cells in rows:
        lines.append(
            f"| {sampler} | {label} | "
            + " | ".join(cell_text(*cells[b][:2], b, cells[b][2]) for b in BUDGETS)
            + " |"
        )
    lines.append(
        "| best peer | "
        + " | ".join(f"{peer_best[b][1]}: {cell_text(peer_best[b][2], peer_best[b][0], b)}" for b in BUDGETS)
        + " |"
    )
    return lines + [""] + summary_lines(rows, peer_best) + [""]


def summary_lines(rows, peer_best) -> list[str]:
    """Per budget: our best tuned row, the best peer, their ratio and whether the 0.5x goal is met."""
    lines = [
        "| NFE | best kept tuned grid (sampler, candidate kept) | error | tuning s | best Karras row of ours | best peer | ratio tuned / peer | goal <= 0.5 |",
        "|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for b in BUDGETS:
        tuned = min((c[b][1], s, c[b][3], c[b][2]) for s, lab, c in rows if lab == KEPT)
        karras = min(c[b][1] for s, lab, c in rows if lab == "Karras rho 7")
        error, sampler, label, seconds = tuned
        peer_error, peer_name, _ = peer_best[b]
        ratio = error / peer_error
        lines.append(
            f"| {b} | {sampler}, {label} | {error:.2e} | {seconds:.0f} | {karras:.2e} | "
            f"{peer_name} {peer_error:.2e} | {ratio:.2f} | {'yes' if ratio <= 0.5 else 'NO'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="300 points, 256-step reference, 64 tuning samples"
    )
    parser.add_argument("--samplers", default="ipndm,unipc", help="our samplers to tune (comma list)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument(
        "--work", default=None, help="where runs are trained (default out/bench-grids[-quick])"
    )
    parser.add_argument("--reuse", action="store_true", help="keep complete runs found in --work")
    parser.add_argument(
        "--out", default=None, help="markdown file (default results/grids.md, --quick grids-quick.md)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_points, ref_steps = (300, 256) if args.quick else (2000, 1024)
    tune_kwargs = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, samples=64 if args.quick else TUNING_SAMPLES)
    start = time.perf_counter()
    sections = []
    work = Path(args.work or f"out/bench-grids{'-quick' if args.quick else ''}")
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    out = Path(args.out) if args.out else RESULTS.with_name("grids-quick.md") if args.quick else RESULTS
    for name in [p for p in parts if p != "digits"]:
        mixture = grids_runs.trained_tree(work, args.reuse) if name == "tree-run" else MIXTURES[name]()
        print(f"{name}: peers ...", file=sys.stderr)
        peer_rows, ref_error = peers.accuracy(n_points, ref_steps, mixture=mixture)
        x, reference = noise_and_reference(mixture, n_points, ref_steps)
        print(f"{name}: tuning ...", file=sys.stderr)
        rows = our_rows(mixture, args.samplers.split(","), x, reference, tune_kwargs)
        sections += mixture_section(name, rows, best_peers(peer_rows), ref_error, n_points, ref_steps)
        write_results(out, args.quick, start, sections, done=False)  # a later failure keeps this part
    if "digits" in parts:
        print("digits: training, tuning, sampling ...", file=sys.stderr)
        sections += grids_runs.digits_part(work, args.reuse, args.quick)
    return write_results(out, args.quick, start, sections, done=True)


def write_results(out: Path, quick: bool, start: float, sections: list[str], done: bool) -> str:
    header = [
        "# Grids tuned to the model",
        "",
        f"Generated by `python benchmarks/bench_grids.py{' --quick' if quick else ''}` on {platform.machine()} / "
        f"{platform.system()}, 1 torch thread, torch {torch.__version__}, k-diffusion {peers.version('k-diffusion')}, "
        f"diffusers {peers.version('diffusers')}, in {time.perf_counter() - start:.0f} s (peers included"
        f"{'' if done else '; PARTIAL: the run was still going'}). "
        "What is measured and how: the docstring of benchmarks/bench_grids.py; the method: docs/samplers.md.",
        "",
    ]
    text = "\n".join(header + sections)
    out.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
