"""The trained-run parts of bench_grids.py: a trained tree run (same table as the exact mixtures) and
the digits part (classifier-feature FID, precision/recall and accuracy at NFE 8 and 16, tuned vs Karras).

Both train their runs into --work (reused with --reuse when they reached their steps).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

from diffguide.samplers.tuning import tune_grid

DIGITS_BUDGETS = (8, 16)
DIGITS_SAMPLER = "ipndm"  # the most accurate sampler here at 8-16 evaluations (results/peers.md)
# tuning effort on images: 32 tuning (and 32 validation) draws, a third of the default search budget
DIGITS_TUNING = {"samples": 32, "max_evals": 100}
DIGITS_KEYS = ("fid_digits_clf", "kid_digits_clf", "precision_digits_clf", "recall_digits_clf", "accuracy")


def _train(preset: str, work: Path, reuse: bool, sets=()) -> Path:
    """Train `preset` (with overrides) into work/preset, or keep it with --reuse once it is complete."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.models.runs import load_run
    from diffguide.train import train

    cfg = apply_overrides(load_preset(preset), list(sets))
    run_dir = work / preset
    if reuse and (run_dir / "config.json").is_file():
        try:
            if load_run(run_dir).step == cfg.train.steps:
                return run_dir
        except Exception:  # an incomplete or damaged run: train it again
            pass
    shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own folder under --work
    start = time.perf_counter()
    train(cfg, run_dir, progress=False)
    print(f"trained {preset} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return run_dir


def trained_tree(work: Path, reuse: bool):
    """The demo's expert (preset demo-expert, seed 0) without condition (its label-dropout output), so
    the exact-mixture benchmark runs on it unchanged: float64 in and out, float32 inside the network
    (as the MLP computes)."""
    from diffguide.models.runs import load_run

    return load_run(_train("demo-expert", work, reuse)).denoiser


def digits_part(work: Path, reuse: bool, quick: bool) -> list[str]:
    """Markdown lines: per budget, the Karras grid and the tuned grid of iPNDM (tune_grid's default
    method with DIGITS_TUNING, classes 0..9 in turn as `eval` samples them), their end-point errors on
    the tuner's validation draws and the image metrics of `n` samples; the run's own sampler and the
    real floor."""
    from diffguide.classifiers.images import train_classifier
    from diffguide.data.registry import DataConfig
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run

    sets = ["train.steps=40", "train.warmup_steps=5", "train.ckpt_every=40"] if quick else []
    run = load_run(_train("digits-cfg", work, reuse, sets))
    clf = work / "classifier-digits"
    if not (reuse and (clf / "classifier.json").is_file()):
        train_classifier(
            DataConfig(name="digits", conditional=True), clf, log=None, steps=40 if quick else 800
        )
    n, tuning = (100, {"samples": 8, "max_evals": 10}) if quick else (1000, DIGITS_TUNING)
    s = run.config.sample
    sigma_min, sigma_max = s.sigma_min or run.process.sigma_min, s.sigma_max or run.process.sigma_max
    labels = torch.arange(tuning["samples"]) % run.num_classes
    rows = []

    def measure(label, sampler, sigmas, **extra):
        result, _ = evaluate_images(run, run.denoiser, clf, n=n, seed=0, sampler=sampler, sigmas=sigmas)
        rows.append({"grid": label, "sampler": sampler, **extra, **{k: result[k] for k in DIGITS_KEYS}})
        print(f"  digits {sampler} {label}: FID {result['fid_digits_clf']:.3f}", file=sys.stderr)

    for nfe in DIGITS_BUDGETS:
        tuned = tune_grid(
            run.denoiser, tuple(run.dataset.shape), DIGITS_SAMPLER, nfe, sigma_min=sigma_min,
            sigma_max=sigma_max, rho=s.rho, cond=labels, dtype=torch.float32, **tuning,
        )  # fmt: skip
        common = {"nfe": nfe, "seconds": None}
        measure("Karras rho 7", DIGITS_SAMPLER, tuned.grids["karras"], error=tuned.error_before, **common)
        common["seconds"] = tuned.seconds
        measure(f"tuned ({tuned.chosen})", DIGITS_SAMPLER, tuned.sigmas, error=tuned.error_after, **common)
    from images_punks import digits_floor

    default = evaluate_images(run, run.denoiser, clf, n=n, seed=0)[0]
    return digits_table(rows, default, digits_floor(run, clf, n), n, tuning)


def digits_table(rows, default: dict, floor: dict, n: int, tuning: dict) -> list[str]:
    heads = ("FID", "KID", "precision", "recall", "accuracy")
    lines = [
        "## digits (digits-cfg, trained here)",
        "",
        f"Class-conditional samples (classes 0..9 in turn, no guidance), {n} images per row, seed 0; metrics "
        "on the features of the benchmark's digits classifier against the held-out digits (lower FID/KID "
        f"is better). End-point error: RMS distance to the tuner's ODE reference on its {tuning['samples']} "
        f"validation draws (the same for both grids). Tuning: {tuning['samples']} draws, max_evals "
        f"{tuning['max_evals']}; seconds on one thread.",
        "",
        "| sampler | NFE | grid | end-point error | tuning s | " + " | ".join(heads) + " |",
        "|---|---:|---|---:|---:|" + "---:|" * len(heads),
    ]
    for r in rows:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(
            f"| {r['sampler']} | {r['nfe']} | {r['grid']} | {r['error']:.3e} | {seconds} | "
            + " | ".join(f"{r[k]:.3f}" if k != "kid_digits_clf" else f"{r[k]:.4f}" for k in DIGITS_KEYS)
            + " |"
        )
    for label, r in (
        (f"the run's own: {default['sampler']} {default['steps']} steps", default),
        ("real training digits (the floor)", floor),
    ):
        lines.append(
            f"| {label} | | | | | "
            + " | ".join(f"{r[k]:.3f}" if k != "kid_digits_clf" else f"{r[k]:.4f}" for k in DIGITS_KEYS)
            + " |"
        )
    return lines + [""]
