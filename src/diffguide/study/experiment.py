"""The guidance study behind `diffguide demo`: no guidance vs CFG vs autoguidance on the tree mixture
(or on your own 2D data: `StudySettings.data`, `diffguide demo --data FILE`).

1. Train the expert (class-conditional with label dropout, so it is also its own CFG guide) and the
   amateur (narrower and shorter, Karras et al. 2024) on the two-class tree mixture.
2. Sample the same per-sample seeds and labels with no guidance, CFG and autoguidance over a sweep of
   weights (and once with both guides), and score every set with the exact metrics of metrics2d.
3. On the S-curve (the S-curve autoguidance experiment), train one net for `scurve_steps` steps and use its snapshot at
   `scurve_amateur_steps` as the amateur; draw the expert, amateur and difference fields.
4. Write report.md, metrics.json and the figures; return the metrics.

On your own data (a points or mixture file) the pair is trained on it and scored by
study.evaluation: a mixture file gives every exact metric; points give sliced W2 and the distance to
the data, and the rule picks w by sliced W2. Unlabelled data skips the CFG methods, and the S-curve
experiment (step 3) is skipped: it is about the S-curve.

Every step is a library function; cli/demo.py only parses options and calls `run_study`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffguide.config import apply_overrides, load_preset
from diffguide.guidance import autoguidance, cfg_and_autoguidance, classifier_free_guidance
from diffguide.guidance.pairing import amateur_config, write_guidance_note
from diffguide.io import atomic_write_text, check_output_folder
from diffguide.metrics.points import sliced_w2
from diffguide.models.runs import load_run
from diffguide.noise import PerSampleNoise
from diffguide.samplers.generation import generate, sampling_callback, sigma_grid
from diffguide.samplers.registry import get_sampler
from diffguide.study import plots as study_plots
from diffguide.study import report as study_report
from diffguide.study.bars import BarFactory, phase_bar
from diffguide.study.evaluation import evaluation_for, rounded, user_data
from diffguide.study.plots import grid_points, integrate_score, score_on, scurve_figure
from diffguide.train import train
from diffguide.train.checkpoint import checkpoint_name

SELECTION_RULE = (
    "for each method, the w of the sweep with the highest precision among those whose coverage is at "
    "least the unguided coverage minus {tol} (quality gained without giving up more than {tol} of variety); "
    "when no such w beats the unguided precision the rule keeps w = 1 (no guidance) and the method is "
    "reported at the w of its sweep with the best precision, flagged helped = false"
)
POINTS_RULE = (
    "without an exact density, for each method the w of the sweep with the lowest sliced W2 to the data, "
    "when it is lower than the unguided sliced W2; else w = 1 (no guidance) and the method is reported "
    "at the w of its sweep with the lowest sliced W2, flagged helped = false"
)
CFG_SKIPPED = "the data has no class labels (or one class), so there is no condition to guide"
# written first into --out: a folder holding it is an earlier demo's output (finished or interrupted)
MARKER_FILE = "demo.json"
MARKER = {"written_by": "diffguide demo"}
LEGACY_KEYS = ("selection_rule", "timings_s", "runs")  # a metrics.json of a demo from before MARKER_FILE


@dataclass
class StudySettings:
    """Sizes of the study. `fast()` shrinks it for tests; the defaults are the README demo."""

    seed: int = 0
    data: str = ""  # your own 2D data file (points or mixture, see data/files.py); "" = the tree
    expert_preset: str = "demo-expert"
    expert_overrides: list = field(default_factory=list)
    amateur_width: int = 32
    amateur_steps: int = 1000
    n_samples: int = 2000
    sampler: str = "heun"
    sampler_steps: int = 24
    sigma_max: float = 10.0
    cfg_weights: tuple = (1.5, 2.0, 3.0, 4.0)
    auto_weights: tuple = (1.25, 1.5, 2.0, 2.5, 3.0)
    # CFG limited to a guidance interval (Kynkaanniemi et al. 2024): sigma range and weights
    cfg_interval: tuple = (0.05, 0.5)
    cfg_interval_weights: tuple = (2.0, 3.0)
    both_weights: tuple = (1.5, 1.5)  # (w_auto, w_cfg) of the two-guide sample set
    coverage_tolerance: float = 0.05
    n_reference: int = 30_000
    field_sigma: float = 0.05
    field_res: int = 90
    scurve_preset: str = "demo-scurve"
    scurve_steps: int = 5000
    scurve_amateur_steps: int = 1000
    scurve_n: int = 2000
    scurve_w: float = 2.0
    progress: bool = True
    # torch intra-op threads while the study runs: the nets are tiny, and on 2 cores a second thread
    # cost up to 6x the CPU time of one (measured: 300 training steps took 50 s of CPU with 2 threads,
    # 8 s with 1, on a busy machine); 0 keeps torch's default
    threads: int = 1

    @classmethod
    def fast(cls, seed: int = 0) -> StudySettings:
        """~20-30 s on 2 CPU cores: a smaller tree, short training, few samples, two weights per method.

        The tree has depth 2 (24 components instead of 372) so that a few seconds of training give an
        expert that autoguidance reliably improves: on the full tree a 300-step expert and a 60-step
        amateur gave autoguidance lower precision than no guidance at some seeds. Measured with these
        settings at seeds 0-3: see tests/test_study.py::test_demo_fast_end_to_end.
        """
        return cls(
            seed=seed,
            expert_overrides=[
                "data.options={depth = 2, per_segment = 4}",
                "model.depth=3",
                "train.steps=300",
                "train.batch_size=256",
                "sample.n=200",
            ],
            amateur_width=16,
            amateur_steps=150,
            n_samples=600,
            sampler_steps=12,
            cfg_weights=(2.0, 3.0),
            auto_weights=(1.5, 2.0),
            cfg_interval_weights=(3.0,),
            n_reference=8000,
            field_res=40,
            scurve_steps=400,
            scurve_amateur_steps=100,
            scurve_n=500,
            progress=False,
        )


class Timer:
    """Wall-clock seconds per named phase."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = timer.times.get(name, 0.0) + time.perf_counter() - self.t0

        return _Phase()


# ---------------------------------------------------------------------------------------------
# training


def train_pair(settings: StudySettings, runs_dir: Path, log=print):
    """Train (or reuse, when finished) the tree expert and its amateur; returns (expert, amateur) runs."""

    own = list(user_data(settings.data).overrides) if settings.data else []
    cfg = apply_overrides(
        load_preset(settings.expert_preset),
        [f"train.seed={settings.seed}", *settings.expert_overrides, *own],
    )
    acfg = amateur_config(cfg, settings.amateur_width, settings.amateur_steps)
    expert_dir, amateur_dir = runs_dir / cfg.name, runs_dir / acfg.name
    for c, d in ((cfg, expert_dir), (acfg, amateur_dir)):
        log(f"training {c.name}: width {c.model.width}, depth {c.model.depth}, {c.train.steps} steps")
        train(c, d, resume=True, progress=settings.progress)
    write_guidance_note(expert_dir, amateur=amateur_dir)
    return load_run(expert_dir), load_run(amateur_dir)


def train_scurve(settings: StudySettings, runs_dir: Path, log=print):
    """One S-curve net; returns (expert at the last step, amateur = its snapshot at the earlier step)."""

    every = settings.scurve_amateur_steps
    cfg = apply_overrides(
        load_preset(settings.scurve_preset),
        [
            f"train.seed={settings.seed}",
            f"train.steps={settings.scurve_steps}",
            f"train.ckpt_every={every}",
            f"train.keep_last={math.ceil(settings.scurve_steps / every) + 1}",
            f"train.log_every={max(1, min(every, 100))}",
            "sample.n=300",
        ],
    )
    run_dir = runs_dir / cfg.name
    log(f"training {cfg.name}: {cfg.train.steps} steps (amateur = its snapshot at step {every})")
    train(cfg, run_dir, resume=True, progress=settings.progress)
    expert = load_run(run_dir)
    amateur = load_run(run_dir, checkpoint=checkpoint_name(every))
    return expert, amateur


# ---------------------------------------------------------------------------------------------
# sampling and the sweep


def guided_sets(expert, amateur, settings: StudySettings) -> list[tuple[str, float, object]]:
    """(method, w, denoiser) for every sample set of the sweep, no guidance first."""
    d1, d0, k = expert.denoiser, amateur.denoiser, expert.num_classes
    sets = [("none", 1.0, d1)]
    sets += [("autoguidance", w, autoguidance(d1, d0, w)) for w in settings.auto_weights]
    if not k:  # CFG_SKIPPED
        return sets
    sets += [("cfg", w, classifier_free_guidance(d1, w, k)) for w in settings.cfg_weights]
    sets += [
        ("cfg-interval", w, classifier_free_guidance(d1, w, k, interval=settings.cfg_interval))
        for w in settings.cfg_interval_weights
    ]
    if settings.both_weights:
        wa, wc = settings.both_weights
        sets.append(("cfg+autoguidance", wa, cfg_and_autoguidance(d1, d0, wa, wc, k)))
    return sets


def _best(rows: list[dict]) -> dict:
    """The row of highest precision (then coverage); without exact metrics, of lowest sliced W2."""
    if rows[0].get("precision") is None:
        return min(rows, key=lambda r: r["sliced_w2"])
    return max(rows, key=lambda r: (r["precision"], r["coverage"]))


def choose_weight(rows: list[dict], none: dict, tolerance: float) -> dict:
    """The SELECTION_RULE: highest precision with coverage >= coverage(none) - tolerance, if it beats
    the unguided precision; else w = 1 (the unguided numbers). POINTS_RULE without exact metrics."""
    if none.get("precision") is None:
        best = _best(rows) if rows else None
        if best is None or best["sliced_w2"] >= none["sliced_w2"]:
            return {**none, "method": rows[0].get("method", "none") if rows else "none", "w": 1.0}
        return best
    ok = [r for r in rows if r["coverage"] >= none["coverage"] - tolerance]
    best = max(ok, key=lambda r: (r["precision"], r["coverage"])) if ok else None
    if best is None or best["precision"] <= none["precision"]:
        return {**none, "method": rows[0].get("method", "none") if rows else "none", "w": 1.0}
    return best


summarize = rounded  # the headline numbers of one evaluation (overall metrics, rounded)


def report_weight(rows: list[dict], none: dict, tolerance: float) -> tuple[dict, dict]:
    """(reported, rule): the rule's choice, and the row a method is reported with.

    When the rule chose a w > 1, that row with helped = True. When no w helped (the rule's w = 1 is no
    guidance, so its numbers would be a copy of "none"), the sweep's row with the best precision, with
    helped = False: the method is still shown at a real weight, and the table says it did not help.
    """
    rule = choose_weight(rows, none, tolerance)
    # a row of the sweep, not the unguided copy (w = 1 is not no guidance for every method: CFG++'s
    # lambda, classifier guidance's scale)
    helped = any(rule is r for r in rows)
    shown = rule if helped else _best(rows)
    reported = {**summarize(shown), "w": float(shown["w"]), "helped": helped, "rule_w": float(rule["w"])}
    return reported, {**summarize(rule), "w": float(rule["w"])}


def describe(m: dict) -> str:
    """One log line of metrics; those the data cannot give (no exact density) left out."""
    parts = [f"{k} {m[k]:.3f}" for k in ("precision", "coverage") if m.get(k) is not None]
    parts += [f"mean_logp {m['mean_logp']:8.2f}"] if m.get("mean_logp") is not None else []
    parts += [f"sliced_w2 {m['sliced_w2']:.4f}"]
    parts += [f"distance_to_data {m['distance_to_data']:.4f}"] if "distance_to_data" in m else []
    return "  ".join(parts)


def run_sweep(expert, amateur, settings: StudySettings, evaluator, timer: Timer, log=print, bars=None):
    """Sample every set with the same seeds and labels; returns (samples, labels, evaluations list).
    bars: progress bars (study.bars), one over every set's samples."""
    labels = evaluator.labels(settings.n_samples, settings.seed)
    sigmas = sigma_grid("karras", settings.sampler_steps, expert.process, sigma_max=settings.sigma_max)
    results, samples = [], {}
    sets = guided_sets(expert, amateur, settings)
    n = settings.n_samples
    with phase_bar(bars, n * len(sets), f"sampling {len(sets)} sets") as bar:
        for k, (method, w, denoiser) in enumerate(sets):
            with timer("sampling"):
                x = generate(
                    denoiser, n, expert.dataset.shape, sigmas=sigmas, sampler=settings.sampler,
                    seed=settings.seed, cond=labels, callback=sampling_callback(bar, len(sigmas) - 1, offset=k * n),
                )  # fmt: skip
            with timer("metrics"):
                m = evaluator.evaluate(x, labels)
            samples[(method, w)] = x
            results.append({"method": method, "w": float(w), **m})
            log(f"  {method:17s} w={w:<4g} {describe(m)}")
    return samples, labels, results


# ---------------------------------------------------------------------------------------------
# fields and trajectories for the figures


def zoom_window(mixture, cls: int = 0) -> tuple[tuple[float, float], float]:
    """A window on the first fork of one class: where its trunk (the heaviest components) splits into
    the two first branches (the next heaviest). Centred on the branches, half-size 1.25 x their extent.

    The fork is the structure the demo's expert resolves well (score error ~20% at sigma = 0.05, vs
    50-70% on the thin outer branches, measured against the exact score) and where guidance's effect
    is visible: the models differ in how sharply they separate the two branches from the gap between.
    """
    keep = mixture.classes == cls
    weights, means = mixture.weights[keep], mixture.means[keep]
    levels = torch.unique(weights).flip(0)  # heaviest first: trunk, first branches, ...
    branches = means[torch.isclose(weights, levels[min(1, len(levels) - 1)])].numpy()
    c = branches.mean(0)
    half = 1.25 * float(np.abs(branches - c).max())
    return (float(c[0]), float(c[1])), half


def model_fields(main, guide, center, half, sigma: float, cond: int, res: int) -> dict:
    """Scores of both models on a zoom grid, their integrated log-densities and a coarse arrow grid."""

    xs, ys, pts = grid_points(center, half, res)
    h = xs[1] - xs[0]
    s_main, s_guide = score_on(main, pts, sigma, cond), score_on(guide, pts, sigma, cond)
    _, _, at = grid_points(center, half * 0.92, 12)
    return {
        "sigma": sigma,
        "xs": xs,
        "ys": ys,
        "phi_main": integrate_score(s_main, res, h),
        "phi_guide": integrate_score(s_guide, res, h),
        "arrow_at": at.numpy(),
        "score_main": score_on(main, at, sigma, cond),
        "score_guide": score_on(guide, at, sigma, cond),
    }


def zoomed_trajectories(denoiser, mixture, center, half, cond: int, settings: StudySettings, n: int = 60):
    """Paths [T, n, 2] of Heun sampling from sigma = 4 * field_sigma, started at blurred ground-truth
    points inside the window (as in Karras et al. 2024, Fig. 1), recorded with the sampler callback."""
    g = torch.Generator().manual_seed(settings.seed + 7)
    start_sigma = 4 * settings.field_sigma
    pts = []
    while sum(len(p) for p in pts) < n:
        x, _ = mixture.sample(4000, sigma=start_sigma, cond=torch.full((4000,), cond), generator=g)
        pts.append(x[(x - torch.tensor(center)).abs().max(1).values < 0.8 * half])
    x = torch.cat(pts)[:n].float()
    sigmas = sigma_grid("karras", 12, sigma_min=0.002, sigma_max=start_sigma)
    path = [x.clone()]
    get_sampler("heun")(
        denoiser,
        x,
        sigmas,
        cond=torch.full((n,), cond, dtype=torch.long),
        generator=PerSampleNoise.from_seed(settings.seed, n),
        callback=lambda info: path.append(info["x"].clone()),
    )
    return torch.stack(path).numpy()


# ---------------------------------------------------------------------------------------------
# the study


def check_out(out: Path, force: bool = False) -> None:
    """Refuse, before any training, an --out that is a file, or a non-empty folder holding no earlier
    demo output, unless force (io.check_output_folder)."""
    check_output_folder(out, "demo", _earlier_demo, force=force)


def _earlier_demo(out: Path) -> bool:
    """Whether `out` holds the demo's marker, or a metrics.json of a demo from before the marker."""
    for name, keys in ((MARKER_FILE, tuple(MARKER)), ("metrics.json", LEGACY_KEYS)):
        try:
            record = json.loads((out / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        ours = record.get("written_by", MARKER["written_by"]) == MARKER["written_by"]
        if ours and all(k in record for k in keys):
            return True
    return False


def run_study(
    out_dir: str | Path,
    settings: StudySettings | None = None,
    log=print,
    *,
    force: bool = False,
    bars: BarFactory | None = None,
) -> dict:
    """Run the whole study into out_dir; returns the metrics dict also written to metrics.json.

    force: write into a folder of other files too (check_out); bars: progress bars of the sampling
    phases (study.bars; training bars follow settings.progress)."""

    settings = settings or StudySettings()
    out = Path(out_dir)
    check_out(out, force)
    previous_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _run_study(out, settings, log, bars)
    finally:
        torch.set_num_threads(previous_threads)


def _reported(results: list[dict], settings: StudySettings) -> tuple[dict, dict]:
    """Each method at its reported w, and the rule's choice (see report_weight)."""
    none = next(r for r in results if r["method"] == "none")
    reported, rule = {}, {}
    for method in ("cfg", "cfg-interval", "autoguidance"):
        rows = [r for r in results if r["method"] == method]
        if rows:
            reported[method], rule[method] = report_weight(rows, none, settings.coverage_tolerance)
    both = [r for r in results if r["method"] == "cfg+autoguidance"]
    if both:  # one fixed pair of weights, reported as measured
        reported["cfg+autoguidance"] = {**summarize(both[0]), "w": both[0]["w"]}
        reported["cfg+autoguidance"]["w_cfg"] = settings.both_weights[1]
    if "cfg-interval" in reported:
        reported["cfg-interval"]["interval"] = list(settings.cfg_interval)
    return reported, rule


def _run_study(out: Path, settings: StudySettings, log, bars) -> dict:

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER_FILE, json.dumps(MARKER) + "\n")
    runs_dir = out / "runs"
    timer = Timer()
    t_start = time.perf_counter()

    with timer("training (expert + amateur)"):
        expert, amateur = train_pair(settings, runs_dir, log)
    with timer("metrics"):
        evaluator = evaluation_for(expert, settings.n_reference, settings.seed + 12345, settings.n_samples)
    if evaluator.skipped:
        log(f"skipped: {evaluator.skipped}")
    log("sampling and scoring (same seeds and labels for every method):")
    samples, labels, results = run_sweep(expert, amateur, settings, evaluator, timer, log, bars)

    with timer("metrics"):
        truth_x, truth_labels = evaluator.truth(settings.n_samples, settings.seed + 99)
        truth = evaluator.evaluate(truth_x, truth_labels)
    none = next(r for r in results if r["method"] == "none")
    reported, rule = _reported(results, settings)
    sweep_rows = [{k: r[k] for k in ("method", "w", *summarize(r))} for r in results if r["method"] != "none"]
    r = {"samples": samples, "labels": labels, "results": results, "sweep": sweep_rows, "none": none,
         "truth": truth, "truth_x": truth_x, "truth_labels": truth_labels, "reported": reported, "rule": rule}  # fmt: skip
    with timer("figures"):
        if evaluator.exact:
            figures = tree_figures(out, expert, amateur, evaluator, settings, r)
        else:
            figures = points_figure(out, expert, evaluator, settings, r)

    if settings.data:
        scurve = {"metrics": None, "figure": None}
    else:
        with timer("S-curve (training, sampling, figure)"):
            scurve = scurve_study(settings, runs_dir, out / "scurve_autoguidance.png", log, bars)

    total = time.perf_counter() - t_start
    metrics = {
        "data": _data_note(settings, expert, evaluator),
        "none": {**summarize(none), "w": 1.0},
        "cfg": reported.get("cfg"),
        "autoguidance": reported["autoguidance"],
        "cfg_interval": reported.get("cfg-interval"),
        "cfg+autoguidance": reported.get("cfg+autoguidance"),
        "ground_truth": {**summarize(truth), "w": None},
        "rule_choice": rule,
        "per_class": {r["method"] + f"@{r['w']:g}": r.get("per_class", {}) for r in results},
        "sweep": sweep_rows,
        "selection_rule": (SELECTION_RULE.format(tol=settings.coverage_tolerance) if evaluator.exact
                           else POINTS_RULE),
        "scurve": scurve["metrics"],
        "figures_detail": figures["detail"],
        "timings_s": {**{k: round(v, 1) for k, v in timer.times.items()}, "total": round(total, 1)},
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        "runs": {"expert": str(expert.path), "amateur": str(amateur.path)},
        "figures": {**{k: v for k, v in figures.items() if k != "detail"}, "scurve": scurve["figure"]},
    }  # fmt: skip
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = study_report.write_report(out / "report.md", metrics, settings, expert, amateur)
    metrics["report"] = str(report)
    return metrics


def _data_note(settings: StudySettings, expert, evaluator) -> dict:
    """What the study ran on, and which metrics and methods it had to skip (with the reasons)."""
    skipped = {}
    if evaluator.skipped:
        skipped["exact metrics"] = evaluator.skipped
    if not expert.num_classes:
        skipped["CFG"] = CFG_SKIPPED
    if settings.data:
        skipped["S-curve"] = "the S-curve experiment is about the S-curve; run the demo without --data for it"
    return {
        "file": settings.data or None,
        "name": expert.config.data.name,
        "exact": evaluator.exact,
        "classes": expert.num_classes,
        "skipped": skipped,
    }


def points_figure(out: Path, expert, evaluator, settings: StudySettings, r: dict) -> dict:
    """samples.png for data without a density: the data and each method's samples at its reported w."""
    panels = {"data": (r["truth_x"], r["truth_labels"])}
    for method in ("none", "autoguidance", "cfg"):
        row = r["reported"].get(method) if method != "none" else {"w": 1.0}
        if row is not None:
            panels[f"{method}, w={row['w']:g}"] = (r["samples"][(method, row["w"])], r["labels"])
    png = study_plots.samples_figure(
        out / "samples.png", panels, f"{expert.config.data.name}: {settings.data}"
    )
    return {"samples": png.name, "detail": {"panels": list(panels)}}


def tree_figures(out: Path, expert, amateur, evaluator, settings: StudySettings, r: dict):
    """study_panel.png and weight_sweep.png from the sweep's results `r`; returns their names and the
    figures' own numbers (zoom window, weights shown, end points inside the 99% region)."""

    mixture, reported, results = expert.dataset.mixture, r["reported"], r["results"]
    cls = 0
    zc, zh = zoom_window(mixture, cls)
    # the sample panels show each method at its reported w (the rule's choice, or when nothing helped
    # the sweep's largest w: what "CFG at high w" does); trajectories at the largest autoguidance w,
    # where the effect on single paths is large enough to see
    w_auto = (
        reported["autoguidance"]["w"] if reported["autoguidance"]["helped"] else settings.auto_weights[-1]
    )
    # the fourth sample panel: CFG, or (data without classes) autoguidance at the sweep's largest w
    if "cfg" in reported:
        fourth, name4 = "cfg", "CFG"
        w_cfg = reported["cfg"]["w"] if reported["cfg"]["helped"] else settings.cfg_weights[-1]
    else:
        fourth, name4, w_cfg = "autoguidance", "Autoguidance", settings.auto_weights[-1]
    w_traj = max(settings.auto_weights)
    fields = model_fields(
        expert.denoiser, amateur.denoiser, zc, zh, settings.field_sigma, cls, settings.field_res
    )
    traj, inside = {}, {}
    for key, denoiser in (
        ("none", expert.denoiser),
        ("autoguidance", autoguidance(expert.denoiser, amateur.denoiser, w_traj)),
    ):
        traj[key] = zoomed_trajectories(denoiser, mixture, zc, zh, cls, settings)
        end = torch.from_numpy(traj[key][-1]).double()
        logp = mixture.log_prob(end, 0.0, torch.full((len(end),), cls))
        inside[key] = (logp >= evaluator.tau[cls]).numpy()
    truth_x = r["truth_x"]
    lim = float(np.quantile(np.abs(truth_x.numpy()), 0.998)) * 1.08
    none = r["none"]
    e, a = expert.config.model, amateur.config.model
    panel = study_plots.study_panel(
        out / "study_panel.png",
        {
            "mixture": mixture,
            "lim": lim,
            "zoom_center": zc,
            "zoom_half": zh,
            "zoom_background": study_plots.density_image_window(mixture, zc, zh, 160, cond=cls),
            "zoom_tau": evaluator.tau[cls],
            "ground_truth": truth_x.numpy(),
            "ground_truth_labels": r["truth_labels"].numpy(),
            "labels": None if r["labels"] is None else r["labels"].numpy(),
            "samples": {
                "none": r["samples"][("none", 1.0)].numpy(),
                "autoguidance": r["samples"][("autoguidance", w_auto)].numpy(),
                "cfg": r["samples"][(fourth, w_cfg)].numpy(),
            },
            "titles": {
                "none": f"No guidance (precision {none['precision']:.2f}, coverage {none['coverage']:.2f})",
                "autoguidance": _title("Autoguidance", results, "autoguidance", w_auto),
                "cfg": _title(name4, results, fourth, w_cfg),
            },
            "fields": fields,
            "trajectories": traj,
            "trajectory_inside": inside,
            "w_trajectories": w_traj,
            "suptitle": (
                f"{_data_title(settings)}; expert {e.width}x{e.depth}, {expert.step} steps; "
                f"amateur {a.width}x{a.depth}, {amateur.step} steps\nzoom panels (dashed box): "
                f"{'a window on class 0' if settings.data else 'the first fork of class A'} at sigma = "
                f"{settings.field_sigma:g}"
            ),
        },
    )
    sweep_png = study_plots.sweep_figure(out / "weight_sweep.png", r["sweep"], none, r["truth"], reported)
    detail = {
        "zoom_center": [round(zc[0], 4), round(zc[1], 4)],
        "zoom_half": round(zh, 4),
        "zoom_sigma": settings.field_sigma,
        "w_shown": {"autoguidance": w_auto, "cfg": w_cfg, "trajectories": w_traj},
        "trajectory_ends_inside": {k: [int(v.sum()), len(v)] for k, v in inside.items()},
    }
    return {"study_panel": panel.name, "weight_sweep": sweep_png.name, "detail": detail}


def _data_title(settings: StudySettings) -> str:
    return (
        f"Your data ({Path(settings.data).name})"
        if settings.data
        else "Two-class tree (blue: class A, orange: B)"
    )


def _title(name: str, results: list[dict], method: str, w: float) -> str:
    r = next(r for r in results if r["method"] == method and r["w"] == w)
    return f"{name}, w={w:g} (precision {r['precision']:.2f}, coverage {r['coverage']:.2f})"


def scurve_study(settings: StudySettings, runs_dir: Path, png: Path, log=print, bars=None) -> dict:
    """Seed 000's experiment: expert vs earlier snapshot on the S-curve, fields and samples."""

    expert, amateur = train_scurve(settings, runs_dir, log)
    s = expert.config.sample
    sigmas = sigma_grid(s.grid, s.steps, expert.process, s.sigma_min, s.sigma_max, s.rho)
    data = torch.as_tensor(expert.dataset.points)
    common = dict(sigmas=sigmas, sampler=s.sampler, seed=settings.seed)
    n, steps = settings.scurve_n, len(sigmas) - 1
    guided = autoguidance(expert.denoiser, amateur.denoiser, settings.scurve_w)
    with phase_bar(bars, 2 * n, "S-curve sampling") as bar:
        x_none = generate(expert.denoiser, n, (2,), **common, callback=sampling_callback(bar, steps))
        x_auto = generate(guided, n, (2,), **common, callback=sampling_callback(bar, steps, offset=n))
    sigma = 0.3
    lim = float(data.abs().max()) * 1.15
    _, _, at = grid_points((0.0, 0.0), lim * 0.9, 17)
    # the difference on a finer grid, kept only within 2 sigma of the data: farther out p(x; sigma) is
    # negligible (< e^-2 of its value on the curve), no sample passes there, and both nets extrapolate
    _, _, fine = grid_points((0.0, 0.0), lim * 0.95, 23)
    ref = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: 4 * settings.scurve_n]]
    near = torch.cdist(fine.float(), ref.float()).min(1).values <= 2 * sigma
    with torch.no_grad():
        sig = torch.full((len(at),), sigma)
        d1, d0 = expert.denoiser(at, sig), amateur.denoiser(at, sig)
        sig = torch.full((len(fine),), sigma)
        difference = (expert.denoiser(fine, sig) - amateur.denoiser(fine, sig)).numpy()
    fields = {"expert": (d1 - at).numpy(), "amateur": (d0 - at).numpy(), "difference": difference}

    def distance_to_data(x):  # mean distance to the nearest data point: how far off the curve
        return round(float(torch.cdist(x.float(), ref.float()).min(1).values.mean()), 5)

    metrics = {
        "expert_steps": expert.step,
        "amateur_steps": amateur.step,
        "w": settings.scurve_w,
        "sliced_w2_none": round(sliced_w2(x_none, ref), 5),
        "sliced_w2_autoguidance": round(sliced_w2(x_auto, ref), 5),
        "distance_to_data_none": distance_to_data(x_none),
        "distance_to_data_autoguidance": distance_to_data(x_auto),
        "sampler": f"{s.sampler}, {s.steps} steps ({s.grid} grid)",
    }
    log(
        f"S-curve, without -> with autoguidance w={settings.scurve_w:g}: mean distance to the data "
        f"{metrics['distance_to_data_none']:.4f} -> {metrics['distance_to_data_autoguidance']:.4f}, "
        f"sliced W2 {metrics['sliced_w2_none']:.4f} -> {metrics['sliced_w2_autoguidance']:.4f}"
    )
    scurve_figure(
        png,
        {
            "lim": lim,
            "data": data[:6000].numpy(),
            "arrow_at": at.numpy(),
            "difference_at": fine.numpy(),
            "difference_near": near.numpy(),
            "fields": fields,
            "sigma": sigma,
            "expert_steps": expert.step,
            "amateur_steps": amateur.step,
            "w": settings.scurve_w,
            "samples": {"none": x_none.numpy(), "autoguidance": x_auto.numpy()},
            "suptitle": (
                f"S-curve: expert = {expert.step} steps, amateur = the same net's snapshot at "
                f"{amateur.step} steps\nwith autoguidance: mean distance to the data "
                f"{metrics['distance_to_data_none']:.3f} -> {metrics['distance_to_data_autoguidance']:.3f}, "
                f"sliced W2 {metrics['sliced_w2_none']:.3f} -> {metrics['sliced_w2_autoguidance']:.3f}"
            ),
        },
    )
    return {"metrics": metrics, "figure": png.name}


__all__ = ["SELECTION_RULE", "StudySettings", "choose_weight", "run_study"]
