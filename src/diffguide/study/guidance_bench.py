"""The guidance benchmark: every method of `guidance.spec.METHODS`, swept over its weight on 2D mixtures
and scored against the exact density (`diffguide guidance-bench`, `benchmarks/bench_guidance.py`).

1. On each dataset (the two-class tree, 8 Gaussians) train the demo's expert and amateur (`train_pair`).
2. For every variant (a method of METHODS, plus the settings of WEIGHTS' extra rows), build the guided
   denoiser through the one builder (`GuidanceSpec` -> `build_guided` -> `sampler_for`) at each weight
   and sample the same per-sample seeds and class labels; score each set with `MixtureMetrics`.
3. Report each variant at the w the demo's rule picks (`report_weight`), against the unguided run of the
   same sampler; time each set, as a ratio to unguided sampling measured in the same run.
4. Write report.md, metrics.json, samples.npz and guidance_bench.png.

`--data FILE` (BenchSettings.data) replaces the two datasets by your own 2D data (study.evaluation):
a mixture file is scored exactly; points by sliced W2 and the distance to the data, the other
metrics skipped with the reason. A method added to METHODS joins automatically, with DEFAULT_WEIGHTS unless WEIGHTS names its own; one
that cannot be built for these runs is listed as skipped with the builder's reason.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffguide.errors import ConfigError
from diffguide.guidance.spec import EXACT, METHODS, GuidanceSpec, build_guided, check, sampler_for
from diffguide.io import atomic_write_file, atomic_write_text, check_output_folder
from diffguide.samplers.generation import generate, sampling_callback, sigma_grid
from diffguide.study.bars import BarFactory, phase_bar
from diffguide.study.evaluation import evaluation_for, user_data
from diffguide.study.experiment import (
    POINTS_RULE,
    SELECTION_RULE,
    StudySettings,
    describe,
    report_weight,
    summarize,
    train_pair,
)
from diffguide.study.plots import bench_figure
from diffguide.study.report import metric_cells, metric_columns, sweep_table

MARKER = "diffguide guidance-bench"  # "benchmark" in metrics.json and MARKER_FILE: a previous result
MARKER_FILE = "guidance-bench.json"  # written first, so an interrupted run's folder (its runs) is reused
DATASETS = {  # name -> config overrides on top of the demo expert's (the tree is the preset's data)
    "tree": [],
    "8gaussians": ['data.name="8gaussians"', "data.options={}"],
}
DEFAULT_WEIGHTS = (1.5, 2.0, 3.0, 4.0)  # a method METHODS gains without an entry below


@dataclass(frozen=True)
class Variant:
    """One benchmark row: a method with fixed settings, swept over `weights`."""

    name: str
    spec: GuidanceSpec  # its w is replaced by each weight
    weights: tuple[float, ...]
    sampler: str | None = None  # None: the benchmark's sampler


# Each method's weights (ours: w = 1 is no guidance; CFG++'s w is the paper's lambda in [0, 1]), the spec
# fields it needs here, the sampler it needs, and extra rows: (row name, spec fields, weights or None).
WEIGHTS: dict[str, tuple[float, ...]] = {
    "none": (1.0,),
    "cfg": (1.5, 2.0, 3.0, 4.0),
    "auto": (1.25, 1.5, 2.0, 2.5, 3.0),
    "classifier": (1.5, 2.0, 3.0, 4.0),
    "cfg+auto": (1.25, 1.5, 2.0),  # w = w_cfg
    "apg": (1.5, 2.0, 3.0, 4.0, 6.0),
    "cfg-zero*": (1.5, 2.0, 3.0, 4.0),
    "tcfg": (1.5, 2.0, 3.0, 4.0),
    "mambo-g": (1.5, 2.0, 3.0, 4.0, 6.0),
    "icg": (1.5, 2.0, 3.0, 4.0),
    "cfg++": (0.2, 0.4, 0.6, 0.8),
    "slg": (1.25, 1.5, 2.0, 3.0),
    "dropout": (1.25, 1.5, 2.0, 3.0),
}
FIELDS = {"classifier": {"classifier": EXACT}}
SAMPLERS = {"cfg++": "euler"}  # its own step replaces euler's (sampler_for); heun is refused
EXTRA = {
    "cfg": [
        ("cfg-interval", {"interval": (0.05, 0.5)}, (2.0, 3.0, 4.0)),
        ("cfg-linear", {"schedule": ("linear", 0.05, 5.0)}, None),
    ],
    "apg": [("apg-eps", {"options": {"space": "eps"}}, None)],
    # the MLP's first residual block skipped instead of its middle one; dropout 0.2 instead of 0.5
    "slg": [("slg-first", {"options": {"skip_layer_guidance_layers": "blocks.0"}}, None)],
    "dropout": [("dropout-0.2", {"options": {"dropout": 0.2}}, None)],
}


def variants(max_weights: int | None = None) -> list[Variant]:
    """Every row of the benchmark, METHODS' order, no guidance first; at most max_weights per row."""
    rows = []
    for kind in METHODS:
        weights = WEIGHTS.get(kind, DEFAULT_WEIGHTS)
        forms = [(kind, {}, None), *EXTRA.get(kind, [])]
        for name, fields, own in forms:
            spec = GuidanceSpec(kind, **{**FIELDS.get(kind, {}), **fields})
            rows.append(Variant(name, spec, _spread(own or weights, max_weights), SAMPLERS.get(kind)))
    return rows


def _spread(weights: tuple[float, ...], k: int | None) -> tuple[float, ...]:
    """k weights spread over the list (first and last kept), or all of them."""
    if not k or len(weights) <= k:
        return tuple(weights)
    return tuple(weights[int(i)] for i in np.unique(np.linspace(0, len(weights) - 1, k).round()))


@dataclass
class BenchSettings:
    """Sizes of the benchmark: the demo's (StudySettings) per dataset, weights per row, timing repeats."""

    study: StudySettings = field(default_factory=StudySettings)
    datasets: tuple[str, ...] = tuple(DATASETS)
    max_weights: int | None = None  # None: every weight of WEIGHTS
    timing_repeats: int = 3  # unguided sampling is timed this many times (median), per sampler

    def with_data(self, path: str) -> BenchSettings:
        """These settings on your own 2D data file (checked here, before any training) instead of DATASETS."""
        data = user_data(path)
        own = [o for o in self.study.expert_overrides if not o.startswith("data.")]
        study = dataclasses.replace(self.study, data=str(path), expert_overrides=own)
        return dataclasses.replace(self, study=study, datasets=(data.name,))

    @classmethod
    def fast(cls, seed: int = 0) -> BenchSettings:
        """`diffguide guidance-bench` (~1 min on 2 cores): the demo's --fast sizes, 2 weights per row."""
        return cls(study=StudySettings.fast(seed), max_weights=2, timing_repeats=2)


def check_out(out: Path, force: bool = False) -> None:
    """Refuse, before any training, an --out that is a file, or a non-empty folder holding no earlier
    guidance-bench result, unless force (io.check_output_folder)."""
    check_output_folder(out, "guidance-bench", _previous_result, force=force)


def _previous_result(out: Path) -> bool:
    for name in (MARKER_FILE, "metrics.json"):
        try:
            if json.loads((out / name).read_text()).get("benchmark") == MARKER:
                return True
        except (OSError, ValueError, AttributeError):
            pass
    return False


# ---------------------------------------------------------------------------------------------
# sampling and scoring


def _sample(
    run, denoiser, sampler, labels, sigmas, settings: StudySettings, bar=None
) -> tuple[torch.Tensor, float]:
    """(samples, seconds): settings.n_samples with the benchmark's seed and labels; `bar` (study.bars)
    moves by n_samples, step by step."""
    n, start = settings.n_samples, time.perf_counter()
    callback = None if bar is None else sampling_callback(bar, len(sigmas) - 1, offset=bar.n)
    x = generate(
        denoiser, n, run.dataset.shape, sigmas=sigmas, sampler=sampler, seed=settings.seed, cond=labels,
        callback=callback,
    )  # fmt: skip
    return x, time.perf_counter() - start


def unguided(run, sampler: str, labels, sigmas, settings: BenchSettings, evaluator, bar=None) -> dict:
    """The unguided row of one sampler: its samples, metrics and median time over timing_repeats (each
    variant's time ratio divides by the unguided times measured next to it: see sweep_variant)."""
    times = []
    for _ in range(max(1, settings.timing_repeats)):
        x, seconds = _sample(run, run.denoiser, sampler, labels, sigmas, settings.study, bar)
        times.append(seconds)
    return {"x": x, "metrics": evaluator.evaluate(x, labels), "seconds": statistics.median(times)}


def sweep_variant(
    run, variant: Variant, labels, sigmas, settings: BenchSettings, evaluator, bar=None
) -> dict:
    """Samples, metrics and times of one variant at each of its weights (built by build_guided)."""
    sampler_name = variant.sampler or settings.study.sampler
    check(variant.spec, run)  # a method this run cannot take (FDG on 2D points) is refused before sampling
    # unguided sampling timed right before and after the sweep: the ratio compares neighbours in time,
    # which a shared, busy machine needs (its load changes over minutes)
    _, before = _sample(run, run.denoiser, sampler_name, labels, sigmas, settings.study, bar)
    rows, samples = [], {}
    for w in variant.weights:
        spec = dataclasses.replace(variant.spec, w=w)
        denoiser = build_guided(run, spec)
        sampler = sampler_for(denoiser, sampler_name)
        x, seconds = _sample(run, denoiser, sampler, labels, sigmas, settings.study, bar)
        m = evaluator.evaluate(x, labels)
        samples[w] = x
        rows.append({"method": variant.name, "w": float(w), **summarize(m), "seconds": seconds})
    _, after = _sample(run, run.denoiser, sampler_name, labels, sigmas, settings.study, bar)
    return {
        "rows": rows, "samples": samples, "sampler": sampler_name, "describe": variant.spec.describe(),
        "unguided_seconds": (before + after) / 2,
    }  # fmt: skip


def bench_dataset(name: str, runs_dir: Path, settings: BenchSettings, log=print, bars=None) -> dict:
    """Train the pair on one dataset and run every variant; returns its results (samples kept apart).
    bars: progress bars (study.bars), one over the dataset's sample sets."""
    study = dataclasses.replace(
        settings.study, expert_overrides=[*settings.study.expert_overrides, *DATASETS.get(name, [])]
    )
    settings = dataclasses.replace(settings, study=study)
    expert, _ = train_pair(study, runs_dir / name, log)
    evaluator = evaluation_for(expert, study.n_reference, study.seed + 12345, study.n_samples)
    if evaluator.skipped:
        log(f"  {name}: skipped: {evaluator.skipped}")
    labels = evaluator.labels(study.n_samples, study.seed)
    sigmas = sigma_grid("karras", study.sampler_steps, expert.process, sigma_max=study.sigma_max)
    rows = [v for v in variants(settings.max_weights) if v.name != "none"]
    samplers = list(dict.fromkeys([study.sampler, *(v.sampler for v in rows if v.sampler)]))
    sets = len(samplers) * max(1, settings.timing_repeats) + sum(len(v.weights) + 2 for v in rows)
    results, skipped, base = {}, {}, {}
    with phase_bar(bars, sets * study.n_samples, f"{name}: sampling {sets} sets") as bar:
        for sampler in samplers:
            base[sampler] = unguided(expert, sampler, labels, sigmas, settings, evaluator, bar)
        for variant in rows:
            try:
                r = sweep_variant(expert, variant, labels, sigmas, settings, evaluator, bar)
            except ConfigError as e:  # a method these runs cannot take (e.g. one needing an image model)
                skipped[variant.name] = str(e)
                log(f"  {name}: {variant.name:12s} skipped: {e}")
                continue
            results[variant.name] = _reported_variant(r, base[r["sampler"]], study.coverage_tolerance)
            reported = results[variant.name]["reported"]
            log(
                f"  {name}: {variant.name:12s} w={reported['w']:<5g} {describe(reported)}  time x{reported['time_ratio']:.2f}"
            )
    samples = {f"none@{s}": b["x"] for s, b in base.items()}
    for variant_name, r in results.items():
        samples.update({f"{variant_name}@{w:g}": x for w, x in r["samples"].items()})
    truth = summarize(evaluator.evaluate(*evaluator.truth(study.n_samples, study.seed + 99)))
    return {
        "unguided": {s: {**summarize(b["metrics"]), "seconds": round(b["seconds"], 4)} for s, b in base.items()},
        "results": results, "skipped": skipped, "samples": samples, "ground_truth": truth,
        "labels": labels, "run": str(expert.path), "exact": evaluator.exact, "metrics_skipped": evaluator.skipped,
        "components": len(evaluator.mixture.weights) if evaluator.exact else None,
    }  # fmt: skip


def _reported_variant(r: dict, none: dict, tolerance: float) -> dict:
    """A variant's sweep `r` with its reported row (report_weight against its sampler's unguided row
    `none`) and its time ratio to unguided sampling."""
    reported, rule = report_weight(r["rows"], summarize(none["metrics"]), tolerance)
    seconds = statistics.median(x["seconds"] for x in r["rows"])
    reported["time_ratio"] = round(seconds / r["unguided_seconds"], 2)
    return {**r, "reported": reported, "rule": rule}


# ---------------------------------------------------------------------------------------------
# the benchmark


def run_benchmark(
    out_dir: str | Path,
    settings: BenchSettings | None = None,
    log=print,
    *,
    force: bool = False,
    bars: BarFactory | None = None,
) -> dict:
    """Run the benchmark into out_dir (report.md, metrics.json, samples.npz, guidance_bench.png).
    force: write into a folder of other files too (check_out); bars: progress bars of the sampling
    (study.bars; training bars follow settings.study.progress)."""
    settings = settings or BenchSettings()
    out = Path(out_dir)
    check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER_FILE, json.dumps({"benchmark": MARKER}) + "\n")
    previous_threads = torch.get_num_threads()
    if settings.study.threads:
        torch.set_num_threads(settings.study.threads)
    try:
        start = time.perf_counter()
        data = {name: bench_dataset(name, out / "runs", settings, log, bars) for name in settings.datasets}
        metrics = bench_metrics(data, settings, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    arrays = {f"{d}/{key}": x.numpy() for d, r in data.items() for key, x in r["samples"].items()}
    arrays.update({f"{d}/labels": r["labels"].numpy() for d, r in data.items() if r["labels"] is not None})
    atomic_write_file(out / "samples.npz", lambda f: np.savez_compressed(f, **arrays))
    exact = {k: d for k, d in metrics["datasets"].items() if d["exact"]}  # the figure plots precision
    figure = bench_figure(out / "guidance_bench.png", {**metrics, "datasets": exact}).name if exact else None
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(out / "report.md", metrics, figure)
    return metrics


def bench_metrics(data: dict, settings: BenchSettings, seconds: float) -> dict:
    """metrics.json: per dataset the unguided rows, each variant's reported row, rule choice and sweep."""
    study = settings.study
    datasets = {}
    for name, d in data.items():
        datasets[name] = {
            "components": d["components"],
            "exact": d["exact"],
            "metrics_skipped": d["metrics_skipped"],
            "run": d["run"],
            "ground_truth": d["ground_truth"],
            "unguided": d["unguided"],
            "methods": {
                v: {"spec": r["describe"], "sampler": r["sampler"], **r["reported"], "rule_choice": r["rule"]}
                for v, r in d["results"].items()
            },
            "sweep": [
                {k: round(x[k], 5) if k == "seconds" else x[k] for k in x}
                for r in d["results"].values()
                for x in r["rows"]
            ],
            "skipped": d["skipped"],
        }
    return {
        "benchmark": MARKER,
        "datasets": datasets,
        "selection_rule": SELECTION_RULE.format(tol=study.coverage_tolerance),
        **({"selection_rule_without_density": POINTS_RULE} if not all(d["exact"] for d in data.values()) else {}),
        "settings": {
            "seed": study.seed, "data": study.data or None, "n_samples": study.n_samples, "sampler": study.sampler,
            "sampler_steps": study.sampler_steps, "sigma_max": study.sigma_max, "n_reference": study.n_reference,
            "expert": [study.expert_preset, *study.expert_overrides],
            "amateur": {"width": study.amateur_width, "steps": study.amateur_steps},
            "max_weights": settings.max_weights, "timing_repeats": settings.timing_repeats,
            "threads": study.threads,
        },
        "total_seconds": round(seconds, 1),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the report


def method_table(dataset: dict) -> str:
    """Markdown: each variant at its reported w, the unguided rows and the ground truth first."""
    columns = metric_columns([dataset["ground_truth"]])
    names = " | ".join(name for name, _ in columns)
    lines = [
        f"| method | sampler | w | rule | {names} | time / unguided |",
        "|" + "---|" * (len(columns) + 5),
    ]
    lines.append(
        f"| ground truth (same n) | - | - | - | {metric_cells(dataset['ground_truth'], columns)} | - |"
    )
    for sampler, m in dataset["unguided"].items():
        lines.append(f"| no guidance | {sampler} | 1 | - | {metric_cells(m, columns)} | 1 |")
    best = "best precision" if dataset.get("exact", True) else "lowest sliced W2"
    for name, m in dataset["methods"].items():
        rule = "chosen" if m["helped"] else f"no w helped: {best}"
        lines.append(
            f"| {name} | {m['sampler']} | {m['w']:g} | {rule} | {metric_cells(m, columns)} | {m['time_ratio']:.2f} |"
        )
    return "\n".join(lines)


def ranking(dataset: dict, tolerance: float) -> str:
    """One sentence: the methods that helped, best first (precision within the coverage tolerance, or
    sliced W2 without an exact density)."""
    exact = dataset.get("exact", True)
    helped = [(n, m) for n, m in dataset["methods"].items() if m["helped"]]
    helped.sort(key=lambda nm: -nm[1]["precision"] if exact else nm[1]["sliced_w2"])
    if not helped:
        if not exact:
            return "no method lowered the sliced W2 to the data below the unguided one."
        return f"no method raised precision while keeping coverage within {tolerance:g} of unguided."
    if exact:
        best = ", ".join(
            f"{n} (w={m['w']:g}: {m['precision']:.3f}, {m['coverage']:.3f})" for n, m in helped[:4]
        )
        lead = f"at coverage within {tolerance:g} of unguided, highest precision (precision, coverage)"
    else:
        best = ", ".join(f"{n} (w={m['w']:g}: {m['sliced_w2']:.4f})" for n, m in helped[:4])
        lead = "lowest sliced W2 to the data"
    missed = [n for n, m in dataset["methods"].items() if not m["helped"]]
    tail = f"; no w helped for {', '.join(missed)}" if missed else ""
    return f"{lead}: {best}{tail}."


def write_report(path: Path, metrics: dict, figure: str | None) -> Path:
    """report.md: settings, one table per dataset, the figure, the full sweep; `figure` its link (None:
    no dataset had an exact density, which the figure's precision axis needs)."""
    s = metrics["settings"]
    tol = float(metrics["selection_rule"].split("minus ")[1].split(" ")[0])
    parts = [
        "# Guidance benchmark\n",
        f"Every method of `diffguide.guidance.spec.METHODS`, built by `build_guided`, on a demo-expert MLP "
        f"trained per dataset ({' '.join(s['expert'][1:]) or 'the preset as is'}; amateur width "
        f"{s['amateur']['width']}, {s['amateur']['steps']} steps). {s['n_samples']} samples per set, the "
        f"same per-sample seeds (seed {s['seed']}) and class labels for every method, {s['sampler']} with "
        f"{s['sampler_steps']} steps (Karras grid, sigma_max {s['sigma_max']:g}; CFG++ takes its own Euler "
        f"step and is compared with unguided Euler). Exact metrics against the true mixture "
        f"({s['n_reference']} reference draws). Times: median sampling time of a method's sets over the mean of "
        f"two unguided runs of its sampler timed just before and after its sweep, in the same process on "
        f"{s['threads'] or 'default'} torch thread(s); a busy machine moves them by tens of percent, so read "
        "them as about 1x, 2x, 3x (one, two, three denoiser evaluations per step) and more.\n",
        f"Selection rule: {metrics['selection_rule']}.\n",
    ]
    if "selection_rule_without_density" in metrics:
        parts.append(f"Selection rule for points: {metrics['selection_rule_without_density']}.\n")
    if figure:
        parts.append(f"![guidance benchmark]({figure})\n")
    for name, d in metrics["datasets"].items():
        parts += [
            f"## {name} ({d['components']} components)\n" if d["exact"] else f"## {name} (points)\n",
            method_table(d) + "\n",
            ranking(d, tol) + "\n",
        ]
        if d["metrics_skipped"]:
            parts.append(f"Skipped metrics: {d['metrics_skipped']}.\n")
        if d["skipped"]:
            parts.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in d["skipped"].items()) + "\n")
    parts.append("## The full sweep\n")
    for name, d in metrics["datasets"].items():
        parts += [f"### {name}\n", sweep_table(d) + "\n"]
    parts.append(f"Total time {metrics['total_seconds']:.0f} s (training included).\n")
    atomic_write_text(path, "\n".join(parts))
    return path


__all__ = [
    "DATASETS", "DEFAULT_WEIGHTS", "WEIGHTS", "BenchSettings", "Variant", "check_out", "run_benchmark",
    "variants", "write_report",
]  # fmt: skip
