"""Time to precision on the demo's tree: DSM (sampled x0) vs exact targets (diffusion.loss.exact_target).

The demo's expert (preset demo-expert, seed 0, torch at 1 thread as `diffguide demo` runs it) is trained
at a few lengths with each target, the two interleaved length by length in this one process so that
the machine's load falls on both alike. Each model is scored as the demo scores its unguided row: the
EMA weights, Heun with 24 steps from sigma 10, 2000 samples with the demo's class labels and seed, the
exact precision/coverage of diffguide.metrics.points.MixtureMetrics (the settings are read from
StudySettings, so they follow the demo). Training seconds are wall-clock of train() alone.

Writes benchmarks/results/recipe.md and recipe.json. `python benchmarks/bench_recipe.py 500 1000`
picks the lengths (default 500 1000 2000 4000).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffguide.config import apply_overrides, load_preset
from diffguide.data import make_dataset
from diffguide.metrics.points import MixtureMetrics, class_labels
from diffguide.models.runs import load_run
from diffguide.samplers.generation import generate, sigma_grid
from diffguide.study.experiment import StudySettings
from diffguide.train import train

LENGTHS = (500, 1000, 2000, 4000)
TARGETS = {"DSM (sampled x0)": [], "exact (mixture E[x0 given x])": ["diffusion.loss.exact_target=true"]}
OUT = Path(__file__).parent / "results"


def train_timed(sets: list[str], steps: int, run_dir: Path) -> float:
    """Train demo-expert for `steps` (cosine decay over them, as a run of that length); wall seconds."""
    sets = [*sets, f"train.steps={steps}", f"train.ckpt_every={steps}", "train.seed=0"]
    cfg = apply_overrides(load_preset("demo-expert"), sets)
    start = time.perf_counter()
    train(cfg, run_dir, progress=False)
    return time.perf_counter() - start


def unguided_metrics(run_dir: Path, settings: StudySettings, evaluator: MixtureMetrics) -> dict:
    """The demo's unguided row for this run: precision, coverage (2000 samples, its labels and seed)."""
    run = load_run(run_dir)
    labels = class_labels(run.dataset.mixture, settings.n_samples, seed=settings.seed)
    sigmas = sigma_grid("karras", settings.sampler_steps, run.process, sigma_max=settings.sigma_max)
    x = generate(
        run.denoiser,
        settings.n_samples,
        run.dataset.shape,
        sigmas=sigmas,
        sampler=settings.sampler,
        seed=settings.seed,
        cond=labels,
    )
    m = evaluator.evaluate(x, labels)
    return {"precision": float(m["precision"]), "coverage": float(m["coverage"])}


def table(rows: list[dict], truth: dict) -> str:
    lines = [
        f"Time to precision on the demo's tree (preset demo-expert, seed 0), DSM vs exact targets, measured "
        f"side by side in one process on {os.cpu_count()} CPU cores (shared with other work: seconds are "
        f"noisy, compare within a length), torch {torch.__version__} at {torch.get_num_threads()} thread "
        f"as the demo. Unguided precision/coverage as the demo computes them (2000 samples, Heun 24 steps); "
        f"true samples score precision {truth['precision']:.3f}, coverage {truth['coverage']:.3f}.",
        "",
        "| steps | target | train s | per step | precision | coverage |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['target']} | {r['seconds']:.1f} | {1000 * r['seconds'] / r['steps']:.1f} ms "
            f"| {r['precision']:.3f} | {r['coverage']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> str:
    lengths = [int(a) for a in argv] or list(LENGTHS)
    settings = StudySettings()
    torch.set_num_threads(settings.threads)
    cfg = load_preset("demo-expert")
    mixture = make_dataset(cfg.data).mixture
    evaluator = MixtureMetrics(mixture, n_reference=settings.n_reference, seed=settings.seed + 12345)
    g = torch.Generator().manual_seed(settings.seed + 99)
    truth_x, comp = mixture.sample(settings.n_samples, generator=g)
    truth = evaluator.evaluate(truth_x, mixture.classes[comp])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in lengths:
            for i, (name, sets) in enumerate(TARGETS.items()):
                run_dir = Path(tmp) / f"{steps}-{i}"
                seconds = train_timed(sets, steps, run_dir)
                m = unguided_metrics(run_dir, settings, evaluator)
                rows.append({"steps": steps, "target": name, "seconds": seconds, **m})
                print(f"{steps:5d} {name:30s} {seconds:6.1f} s  precision {m['precision']:.3f}  "
                      f"coverage {m['coverage']:.3f}", flush=True)  # fmt: skip
    text = table(rows, truth)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "recipe.md").write_text(text + "\n")
    record = {"rows": rows, "truth": {k: float(truth[k]) for k in ("precision", "coverage")}}
    (OUT / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
