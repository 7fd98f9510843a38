"""Sampler accuracy per denoiser evaluation on the tree mixture, and sampler overhead on an MLP.

Accuracy: every sampler drives the tree mixture's exact denoiser (float64, Karras grid 0.002..80) from
the same per-sample noise, with budgets of 4..64 denoiser evaluations (steps from steps_for_evals).
  - deterministic samplers: RMS distance per sample to a 1024-step Heun solution from the same noise
    (the ODE's own error, no Monte Carlo noise);
  - every sampler: distributional errors against the ground truth, which stochastic samplers can only
    be judged by: |mean log p(samples) - E_p[log p]| and the sliced 2-Wasserstein distance to exact
    samples (with the floor that two independent exact sample sets already show).
Overhead: wall time of a 10,000-point batch with the diffguide MLP (width 128, depth 3 as in the 2D
presets; EDMPrecond; untrained) minus the time spent inside the denoiser, as a fraction of the wall
time; median of several repeats.

Run: python benchmarks/bench_samplers.py [--quick]. Writes benchmarks/results/samplers.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from diffguide.denoiser import EDMPrecond
from diffguide.grids import karras_sigmas
from diffguide.mixtures import tree_mixture
from diffguide.models.nets.mlp import MLP
from diffguide.noise import PerSampleNoise
from diffguide.samplers import SAMPLERS, STOCHASTIC, evals_for_steps, steps_for_evals

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
BUDGETS = (4, 8, 16, 32, 64)
WIDTH, DEPTH = 128, 3  # the MLP of the 2D presets (8gaussians-edm, moons-vp, scurve-ve)


def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point sets (sorted 1-D projections)."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(projections, generator=g, dtype=F64) * math.pi
    dirs = torch.stack([angles.cos(), angles.sin()], 1)  # [P, 2]
    pa, _ = (a @ dirs.T).sort(0)
    pb, _ = (b @ dirs.T).sort(0)
    return float(((pa - pb) ** 2).mean().sqrt())


def accuracy_tables(n: int, ref_steps: int) -> str:
    tree = tree_mixture()
    truth, _ = tree.sample(100_000, generator=torch.Generator().manual_seed(123))
    truth_logp = float(tree.log_prob(truth).mean())
    exact_a, _ = tree.sample(n, generator=torch.Generator().manual_seed(1))
    # the distance between two independent exact sets varies a lot from draw to draw (the far branch
    # tips dominate the extreme quantiles), so the floor is the median and range over 11 other sets
    floors = [
        sliced_w2(exact_a, tree.sample(n, generator=torch.Generator().manual_seed(s))[0])
        for s in range(2, 13)
    ]
    floor, floor_lo, floor_hi = statistics.median(floors), min(floors), max(floors)

    x = PerSampleNoise.from_seed(0, n).randn((2,), F64) * SIGMA_MAX
    ref = SAMPLERS["heun"](tree, x, karras_sigmas(ref_steps, SIGMA_MIN, SIGMA_MAX))

    rms, logp_err, w2, used = {}, {}, {}, {}
    for name, fn in SAMPLERS.items():
        for budget in BUDGETS:
            steps = steps_for_evals(name, budget)
            noise = PerSampleNoise.from_seed(0, n)
            start = noise.randn((2,), F64) * SIGMA_MAX  # same initial noise as the reference
            out = fn(tree, start, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), generator=noise)
            key = (name, budget)
            used[key] = evals_for_steps(name, steps)
            if name not in STOCHASTIC:
                rms[key] = float(((out - ref) ** 2).sum(1).mean().sqrt())
            logp_err[key] = abs(float(tree.log_prob(out).mean()) - truth_logp)
            w2[key] = sliced_w2(out, exact_a)
            print(f"  {name:15s} {budget:3d} evals ({steps} steps)", flush=True)

    def table(title: str, values: dict, names) -> list[str]:
        head = "| sampler | " + " | ".join(f"{b} evals" for b in BUDGETS) + " |"
        lines = [title, "", head, "|---|" + "---:|" * len(BUDGETS)]
        for name in names:
            cells = []
            for b in BUDGETS:
                v = values[(name, b)]
                cells.append(f"{v:.3g}" + ("" if used[(name, b)] == b else f" ({used[(name, b)]})"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return lines + [""]

    deterministic = [s for s in SAMPLERS if s not in STOCHASTIC]
    lines = [
        f"Tree mixture (exact denoiser, float64), {n} samples, Karras grid {SIGMA_MIN}..{SIGMA_MAX}, "
        f"per-sample noise seed 0. A number in parentheses is the evaluations actually used when the "
        "budget does not divide into whole steps (2nd-order steps make no 2nd evaluation at sigma = 0).",
        "",
    ]
    lines += table(
        f"**RMS distance per sample to a {ref_steps}-step Heun solution from the same noise** "
        "(deterministic samplers; lower is better)",
        rms,
        deterministic,
    )
    lines += table(
        f"**|mean log p(samples) - E_p[log p]|** (all samplers; E_p[log p] = {truth_logp:.3f} from 100k "
        f"exact draws; the Monte Carlo standard error of a {n}-sample mean is "
        f"{float(tree.log_prob(truth).std()) / math.sqrt(n):.3f}; lower is better)",
        logp_err,
        list(SAMPLERS),
    )
    lines += table(
        f"**Sliced W2 to {n} exact samples** (all samplers, 256 projections; an independent exact set "
        f"of the same size is {floor:.4f} away, median of 11 draws, range {floor_lo:.4f} .. {floor_hi:.4f}: "
        f"the floor, and differences inside that range are noise; lower is better)",
        w2,
        list(SAMPLERS),
    )
    return "\n".join(lines)


class TimedDenoiser:
    """Wraps a denoiser and accumulates the wall time spent inside it."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __call__(self, x, sigma, cond=None):
        start = time.perf_counter()
        out = self.inner(x, sigma, cond)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def overhead_table(n: int, steps: int, repeats: int) -> str:
    torch.manual_seed(0)
    denoiser = EDMPrecond(MLP(dim=2, width=WIDTH, depth=DEPTH), sigma_data=0.5).eval()
    # the untrained MLP's output layer starts at zero (D = c_skip x); give it weights so that the
    # samplers see a non-trivial field (the cost is the same either way)
    torch.nn.init.normal_(denoiser.net.out.weight, std=0.02)
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    lines = [
        f"**Sampler overhead**: {n:,}-point batch, diffguide MLP (width {WIDTH}, depth {DEPTH}, EDMPrecond, float32), "
        f"{steps} steps, {torch.get_num_threads()} torch threads; median of {repeats} runs after a warm-up. "
        "Overhead = wall time minus time inside the denoiser.",
        "",
        "| sampler | denoiser calls | wall (ms) | in denoiser (ms) | overhead (ms) | overhead fraction |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, fn in SAMPLERS.items():
        walls, inside, fractions = [], [], []
        calls = 0
        for r in range(repeats + 1):
            noise = PerSampleNoise.from_seed(r, n)
            x = noise.randn((2,), torch.float32) * SIGMA_MAX
            timed = TimedDenoiser(denoiser)
            start = time.perf_counter()
            fn(timed, x, sigmas, generator=noise)
            wall = time.perf_counter() - start
            if r == 0:
                continue  # warm-up
            walls.append(wall)
            inside.append(timed.seconds)
            fractions.append((wall - timed.seconds) / wall)
            calls = timed.calls
        wall, ins = statistics.median(walls), statistics.median(inside)
        lines.append(
            f"| {name} | {calls} | {1e3 * wall:.1f} | {1e3 * ins:.1f} | {1e3 * (wall - ins):.1f} | "
            f"{statistics.median(fractions):.1%} |"
        )
        print(f"  overhead {name}", flush=True)
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats (a smoke run)")
    args = parser.parse_args(argv)
    n, ref_steps, repeats = (300, 256, 2) if args.quick else (2000, 1024, 5)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"python {platform.python_version()}; 1-minute load average at the start: {load:.1f} (timings "
        "are only comparable between runs on an otherwise idle machine; the accuracy tables do not "
        "depend on the machine)."
    )
    print("accuracy ...", flush=True)
    accuracy = accuracy_tables(n, ref_steps)
    print("overhead ...", flush=True)
    overhead = overhead_table(10_000, 16, repeats)
    text = f"# Samplers\n\n{header}\n\n{accuracy}\n{overhead}\n"
    print(text)
    out = Path(__file__).parent / "results" / ("samplers-quick.md" if args.quick else "samplers.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


if __name__ == "__main__":
    main()
