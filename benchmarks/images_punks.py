"""The learning curves (punks-cfg, digits-cfg) and the CryptoPunks guidance comparison of bench_images.py.

Learning curves: one long run per preset, trained side by side as two `diffguide train` processes of
one thread each (one core each of the 2), with a checkpoint every few hundred steps. The learning rate
is constant after warmup (train.decay = "none"), so nothing depends on train.steps and the checkpoint
at step k is exactly the k-step run (tests/train/test_train_parts.py checks this bit for bit). Each
curve point is the last checkpoint written within 3, 10 and 30 minutes of training (wall clock, from
the run's metrics.jsonl), measured at w = 1 and at one CFG weight against the real-vs-real floor
(training images vs the held-out ones, the same n).

punks-cfg (4500 steps) and punks-fast (1500 steps) are checkpoints of the punks curve run. On
punks-cfg: CFG, autoguidance (an 8-channel 500-step amateur) and CFG + autoguidance over a w sweep,
which accessories each helps, and the figure's grid at the picked w (the CFG weight with the most
exact accessory sets among those with FID within 2x the floor).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

PUNK_KEYS = (
    "type_accuracy",
    "accessory_recall",
    "accessories_exact",
    "fid_cryptopunks_clf",
    "precision_cryptopunks_clf",
    "recall_cryptopunks_clf",
)
# the README's punks figure: a type and accessories per row, each a combination that training punks
# have exactly (a condition asks for the unnamed accessories to be absent; counts from punks.json)
PUNK_CONDITIONS = [
    ("female", ["blonde bob", "purple lipstick"]),  # 3 punks
    ("male", ["earring", "mohawk"]),  # 4
    ("zombie", ["knitted cap"]),  # 1
    ("ape", ["hoodie"]),  # 1
    ("alien", ["headband"]),  # 1
    ("female", ["pilot helmet", "purple lipstick"]),  # 4
    ("male", ["cowboy hat", "muttonchops"]),  # 4
]

DIGIT_KEYS = ("accuracy", "fid_digits_clf", "precision_digits_clf", "recall_digits_clf")

CURVES_FULL = {
    "minutes": [3, 10, 30],
    "punks": ["train.steps=15000", "train.ckpt_every=250", "train.keep_last=100"],
    "digits": [
        "train.decay=none",
        "train.steps=40000",
        "train.ckpt_every=500",
        "train.keep_last=100",
        "train.log_every=100",
    ],
    "punks_w": 2.0,
    "digits_w": 1.5,
    "n": 400,
    "punks_classifier": {"steps": 2500, "batch_size": 64, "lr": 3e-3},
    "digits_classifier": 800,
}
CURVES_QUICK = {
    "minutes": [0.05, 0.1, 0.2],
    "punks": ["train.steps=40", "train.ckpt_every=10", "train.keep_last=100", "train.log_every=5"],
    "digits": ["train.decay=none", "train.steps=60", "train.ckpt_every=10", "train.keep_last=100"],
    "punks_w": 2.0,
    "digits_w": 1.5,
    "n": 24,
    "punks_classifier": {"steps": 4, "batch_size": 16, "lr": 3e-3},
    "digits_classifier": 20,
}
GUIDE_FULL = {
    "expert_step": 4500,
    "fast_step": 1500,
    "amateur": (8, 500),
    "cfg_w": [1.5, 2.0, 3.0, 4.0],
    "auto_w": [1.5, 2.0, 3.0],
    "cfg_auto": [(2.0, 1.5)],  # (w_cfg, w_auto)
    # the other methods of the guidance registry (GuidanceSpec kinds, default options) that apply here;
    # CFG++ is left out: it needs euler/ddim, the run samples with Heun
    "methods": [
        ("apg", [2.0, 3.0]),
        ("cfg-zero*", [2.0]),
        ("tcfg", [2.0]),
        ("mambo-g", [2.0]),
        ("pag", [1.5, 2.0]),
        ("seg", [2.0]),
        ("slg", [1.5]),
        ("dropout", [2.0]),
    ],  # fmt: skip
    "n": 400,
    "per_condition": 8,
    "conditions": PUNK_CONDITIONS,
}
GUIDE_QUICK = {**GUIDE_FULL, "expert_step": 20, "fast_step": 10, "amateur": (8, 4), "cfg_w": [2.0],
               "auto_w": [2.0], "n": 12, "per_condition": 2, "conditions": PUNK_CONDITIONS[:2], "methods": [("apg", [2.0]), ("pag", [2.0])]}  # fmt: skip


def train_side_by_side(work: Path, jobs: dict[str, list[str]], reuse: bool) -> dict[str, Path]:
    """`diffguide train --threads 1` for each {name: [preset, --set ...]} at once; their run folders."""
    procs, out = {}, {}
    for name, (preset, *sets) in jobs.items():
        out[name] = work / name
        if reuse and (work / name / "checkpoints" / "latest").exists():
            continue
        cmd = [sys.executable, "-m", "diffguide", "train", "--preset", preset, "--out", str(work), "--name", name,
               "--threads", "1", "--no-progress", *(a for s in sets for a in ("--set", s))]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        print(f"training {name}: {' '.join(cmd[2:])}", flush=True)
    for name, proc in procs.items():
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"training {name} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return out


def checkpoint_minutes(run_dir: Path) -> dict[int, float]:
    """{step: minutes of training when that step was logged} from metrics.jsonl (training records only)."""
    records = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    records = [r for r in records if "steps_per_s" in r and "time" in r]
    start = records[0]["time"] - records[0]["step"] / records[0]["steps_per_s"]
    return {r["step"]: (r["time"] - start) / 60 for r in records}


def curve_points(run_dir: Path, minutes: list[float]) -> list[dict]:
    """The last checkpoint written within each time budget: {minutes_budget, step, minutes, path}."""
    from diffguide.train.checkpoint import list_checkpoints

    logged = checkpoint_minutes(run_dir)
    ckpts = {int(p.stem.split("-")[1]): p for p in list_checkpoints(run_dir / "checkpoints")}
    timed = sorted((logged[s], s) for s in ckpts if s in logged)
    points = []
    for budget in minutes:
        within = [(m, s) for m, s in timed if m <= budget] or timed[:1]
        m, s = within[-1]
        points.append({"budget_minutes": budget, "step": s, "minutes": round(m, 2), "checkpoint": ckpts[s]})
    return points


def _row(result: dict, keys, **extra) -> dict:
    row = {**extra, **{k: result[k] for k in keys if k in result}}
    if "per_accessory" in result:
        row["per_accessory"] = result["per_accessory"]
    row["sample_seconds"] = result.get("sample_seconds")
    return row


def punks_floor(run, classifier_dir: Path, n: int) -> dict:
    """The real training punks whose attributes the samples request (reference_index), measured like
    samples against the held-out punks: the floor of the same conditions and set size."""
    from diffguide.classifiers.images import load_classifier
    from diffguide.data.images import to_unit
    from diffguide.metrics.images import conditional_accuracy, feature_metrics
    from diffguide.plots.images import reference_index

    classifier, _ = load_classifier(classifier_dir)
    ds = run.dataset
    idx = reference_index(ds, n)
    real_f, _ = classifier.predict(ds.heldout()[0])
    floor_f, pred = classifier.predict(to_unit(ds.images[idx]))
    out = {"guidance": "real training punks", "w": None}
    out.update(feature_metrics(real_f.numpy(), floor_f.numpy(), "cryptopunks_clf"))
    out.update({k: v for k, v in conditional_accuracy(pred, ds.condition_of(idx)).items()})
    return out


def digits_floor(run, classifier_dir: Path, n: int) -> dict:
    from diffguide.classifiers.images import load_classifier
    from diffguide.metrics.images import conditional_accuracy, feature_metrics

    classifier, _ = load_classifier(classifier_dir)
    train_x, train_y = run.dataset.train_images()
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))[:n]
    real_f, _ = classifier.predict(run.dataset.heldout()[0])
    floor_f, pred = classifier.predict(train_x[order])
    out = {"guidance": "real training digits", "w": None}
    out.update(feature_metrics(real_f.numpy(), floor_f.numpy(), "digits_clf"))
    out.update(conditional_accuracy(pred, train_y[order]))
    return out


def measure_curve(run_dir: Path, settings: dict, classifier: Path, w: float, keys) -> list[dict]:
    """Each curve point at w = 1 and CFG w."""
    from diffguide import guidance as G
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run

    rows = []
    for point in curve_points(run_dir, settings["minutes"]):
        run = load_run(run_dir, checkpoint=point["checkpoint"])
        for weight in (1.0, w):
            d = (
                run.denoiser
                if weight == 1
                else G.classifier_free_guidance(run.denoiser, weight, run.num_classes)
            )
            result, _ = evaluate_images(run, d, classifier, n=settings["n"], seed=0)
            info = {k: v for k, v in point.items() if k != "checkpoint"}
            rows.append(_row(result, keys, **info, w=weight))
            print(f"  {run_dir.name} {point['minutes']:.1f} min step {point['step']} w={weight}: "
                  + " ".join(f"{k} {rows[-1][k]:.3f}" for k in keys if k in rows[-1]), flush=True)  # fmt: skip
    return rows


def learning_curves(work: Path, quick: bool, reuse: bool, times: dict) -> dict:
    """Both curve runs side by side, the metric classifiers, then every point measured."""
    from diffguide.classifiers.images import train_classifier
    from diffguide.data.registry import DataConfig
    from diffguide.models.runs import load_run

    s = CURVES_QUICK if quick else CURVES_FULL
    start = time.perf_counter()
    runs = train_side_by_side(
        work,
        {"curve-punks-cfg": ["punks-cfg", *s["punks"]], "curve-digits-cfg": ["digits-cfg", *s["digits"]]},
        reuse,
    )
    if time.perf_counter() - start > 1:  # trained now (not reused from an earlier run)
        times["curves (side by side)"] = round(time.perf_counter() - start, 1)
    clf = {"punks": work / "classifier-cryptopunks-2500", "digits": work / "classifier-digits"}
    if not (reuse and (clf["punks"] / "classifier.json").is_file()):
        train_classifier(DataConfig(name="cryptopunks", conditional=True), clf["punks"], log=None,
                         **s["punks_classifier"])  # fmt: skip
    if not (reuse and (clf["digits"] / "classifier.json").is_file()):
        train_classifier(DataConfig(name="digits", conditional=True), clf["digits"], log=None,
                         steps=s["digits_classifier"])  # fmt: skip
    out = {"settings": dict(s), "classifiers": {k: str(v) for k, v in clf.items()}}
    for name, keys, w, floor in (("punks", PUNK_KEYS, s["punks_w"], punks_floor),
                                 ("digits", DIGIT_KEYS, s["digits_w"], digits_floor)):  # fmt: skip
        run_dir = runs[f"curve-{name}-cfg"]
        out[name] = {
            "run": str(run_dir),
            "rows": measure_curve(run_dir, s, clf[name], w, keys),
            "floor": floor(load_run(run_dir), clf[name], s["n"]),
            "ms_per_step": round(60_000 / _steps_per_minute(run_dir), 1),
        }
    return out


def _steps_per_minute(run_dir: Path) -> float:
    logged = checkpoint_minutes(run_dir)
    last = max(logged)
    return last / logged[last]


def guidance_comparison(work: Path, curve_run: Path, classifier: Path, quick: bool) -> dict:
    """On punks-cfg (the curve run's checkpoint at its preset step): none, CFG, auto, CFG + auto."""
    from diffguide import guidance as G
    from diffguide.config import load_preset
    from diffguide.guidance.pairing import amateur_config
    from diffguide.guidance.spec import GuidanceSpec, build_guided
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run
    from diffguide.train import train

    s = GUIDE_QUICK if quick else GUIDE_FULL
    ckpt = curve_run / "checkpoints" / f"ckpt-{s['expert_step']:08d}.safetensors"
    fast = curve_run / "checkpoints" / f"ckpt-{s['fast_step']:08d}.safetensors"
    expert = load_run(curve_run, checkpoint=ckpt)
    width, steps = s["amateur"]
    amateur_dir = work / "punks-cfg-amateur"
    if not (amateur_dir / "checkpoints" / "latest").exists():
        train(amateur_config(load_preset("punks-cfg"), width, steps), amateur_dir, progress=False)
    amateur = load_run(amateur_dir)
    k = expert.num_classes
    variants = [("none", 1.0, expert.denoiser)]
    variants += [("cfg", w, G.classifier_free_guidance(expert.denoiser, w, k)) for w in s["cfg_w"]]
    variants += [("auto", w, G.autoguidance(expert.denoiser, amateur.denoiser, w)) for w in s["auto_w"]]
    variants += [(f"cfg {wc:g} + auto", wa, G.cfg_and_autoguidance(expert.denoiser, amateur.denoiser, wa, wc, k))
                 for wc, wa in s["cfg_auto"]]  # fmt: skip
    for kind, weights in s["methods"]:
        variants += [(kind, w, build_guided(expert, GuidanceSpec(kind=kind, w=w))) for w in weights]
    rows = []
    for name, w, d in variants:
        result, _ = evaluate_images(expert, d, classifier, n=s["n"], seed=0)
        rows.append(_row(result, PUNK_KEYS, guidance=name, w=w))
        print(
            f"  punks-cfg {name} w={w}: " + " ".join(f"{x} {rows[-1][x]:.3f}" for x in PUNK_KEYS), flush=True
        )
    fast_run = load_run(curve_run, checkpoint=fast)
    fast_rows = []
    for w in (1.0, 2.0):
        d = fast_run.denoiser if w == 1 else G.classifier_free_guidance(fast_run.denoiser, w, k)
        result, _ = evaluate_images(fast_run, d, classifier, n=s["n"], seed=0)
        fast_rows.append(_row(result, PUNK_KEYS, guidance="none" if w == 1 else "cfg", w=w))
    return {"expert": str(ckpt), "expert_step": s["expert_step"], "fast_step": s["fast_step"],
            "amateur": {"path": str(amateur_dir), "channels": width, "steps": steps}, "rows": rows,
            "fast_rows": fast_rows}  # fmt: skip


def pick_weight(rows: list[dict], floor_fid: float) -> dict:
    """The CFG row with the most exact accessory sets among those with FID within 2x the floor."""
    cfg = [r for r in rows if r["guidance"] in ("none", "cfg")]
    ok = [r for r in cfg if r["fid_cryptopunks_clf"] <= 2 * floor_fid] or cfg
    return max(ok, key=lambda r: r["accessories_exact"])


def helped_accessories(rows: list[dict], top: int = 6) -> dict[str, list[tuple[str, float, float]]]:
    """For each guided row: the accessories whose recall rose most over the unguided row (name, before, after)."""
    base = next(r for r in rows if r["guidance"] == "none")["per_accessory"]
    out = {}
    for r in rows:
        if r["guidance"] == "none":
            continue
        gains = sorted(((r["per_accessory"].get(a, 0.0) - v, a) for a, v in base.items()), reverse=True)
        out[f"{r['guidance']} w={r['w']:g}"] = [
            (a, base[a], r["per_accessory"].get(a, 0.0)) for g, a in gains[:top] if g >= 0.01
        ]
    return out


def punks_grid(curve_run: Path, step: int, w: float, grid_path: Path, conditions, per_condition: int) -> None:
    """The labelled grid of named conditions, CFG at w, from the checkpoint at `step`."""
    from diffguide import guidance as G
    from diffguide.models.runs import load_run
    from diffguide.plots.images import save_labelled_grids
    from diffguide.samplers.generation import generate, sigma_grid

    run = load_run(curve_run, checkpoint=curve_run / "checkpoints" / f"ckpt-{step:08d}.safetensors")
    guided = run.denoiser if w == 1 else G.classifier_free_guidance(run.denoiser, w, run.num_classes)
    s = run.config.sample
    sigmas = sigma_grid(s.grid, s.steps, run.process, s.sigma_min, s.sigma_max, s.rho)
    grid = []
    for kind, accessories in conditions:
        cond = run.dataset.attributes.condition(per_condition, kind, accessories)
        with torch.no_grad():
            x = generate(guided, per_condition, run.dataset.shape, sigmas=sigmas, sampler=s.sampler, seed=0,
                         cond=cond)  # fmt: skip
        grid.append((f"--type {kind} " + " ".join(f'--accessory "{a}"' for a in accessories), x))
    save_labelled_grids(grid_path, grid)


def curves_figure(path: Path, curves: dict) -> Path:
    """Metric against training minutes, w = 1 and CFG, the floor dashed; a row per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"punks": ["accessory_recall", "accessories_exact", "fid_cryptopunks_clf", "recall_cryptopunks_clf"],
              "digits": ["accuracy", "fid_digits_clf", "precision_digits_clf", "recall_digits_clf"]}  # fmt: skip
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6), dpi=110)
    for row, (name, keys) in enumerate(panels.items()):
        rows, floor = curves[name]["rows"], curves[name]["floor"]
        for col, key in enumerate(keys):
            ax = axes[row, col]
            for w in sorted({r["w"] for r in rows}):
                pts = [r for r in rows if r["w"] == w]
                ax.plot([r["minutes"] for r in pts], [r[key] for r in pts], "o-",
                        label="no guidance" if w == 1 else f"CFG w={w:g}")  # fmt: skip
            if key in floor:
                ax.axhline(floor[key], ls="--", c="grey", label="real vs real")
            ax.set_xscale("log")
            ax.set_xticks(
                [r["minutes"] for r in rows if r["w"] == 1],
                [f"{r['minutes']:g}" for r in rows if r["w"] == 1],
            )
            ax.minorticks_off()
            ax.set_title(f"{name}-cfg: {key}", fontsize=9)
            ax.set_xlabel("training minutes (1 core)", fontsize=8)
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cells(r: dict, keys) -> str:
    return " | ".join("" if r.get(k) is None else f"{r[k]:.3f}" for k in keys)


def curves_markdown(res: dict) -> str:
    c, g = res["curves"], res["guidance"]
    pk = " | ".join(k.replace("_cryptopunks_clf", "") for k in PUNK_KEYS)
    dk = " | ".join(k.replace("_digits_clf", "") for k in DIGIT_KEYS)
    lines = [
        f"Learning curves and CryptoPunks guidance ({'--quick smoke run' if res['quick'] else 'full run'}), "
        f"{res['hardware']}. Both curve runs trained side by side, one thread each; "
        f"{c['settings']['n']} samples per row (Heun 12 steps), metrics in the feature space of each "
        "dataset's classifier, against the held-out images; floor: the same number of real training "
        "images. Command: docs/images.md.",
        "",
        f"**punks-cfg learning curve** ({c['punks']['ms_per_step']} ms/step):",
        "",
        f"| minutes | step | w | {pk} |",
        "|---|---|---|" + "---|" * len(PUNK_KEYS),
    ]
    for r in c["punks"]["rows"]:
        lines.append(f"| {r['minutes']:.1f} | {r['step']} | {r['w']:g} | {_cells(r, PUNK_KEYS)} |")
    lines.append(f"| real training punks | | | {_cells(c['punks']['floor'], PUNK_KEYS)} |")
    lines += ["", f"**digits-cfg learning curve** (decay none; {c['digits']['ms_per_step']} ms/step):", "",
              f"| minutes | step | w | {dk} |", "|---|---|---|" + "---|" * len(DIGIT_KEYS)]  # fmt: skip
    for r in c["digits"]["rows"]:
        lines.append(f"| {r['minutes']:.1f} | {r['step']} | {r['w']:g} | {_cells(r, DIGIT_KEYS)} |")
    lines.append(f"| real training digits | | | {_cells(c['digits']['floor'], DIGIT_KEYS)} |")
    lines += ["", f"**Guidance on punks-cfg** (step {g['expert_step']}; amateur {g['amateur']['channels']} "
              f"channels, {g['amateur']['steps']} steps); picked: {res['picked']}:", "",
              f"| guidance | w | {pk} | sampling s |", "|---|---|" + "---|" * (len(PUNK_KEYS) + 1)]  # fmt: skip
    for r in g["rows"]:
        lines.append(f"| {r['guidance']} | {r['w']:g} | {_cells(r, PUNK_KEYS)} | {r['sample_seconds']} |")
    lines += ["", f"**punks-fast** (the same run at step {g['fast_step']}):", "",
              f"| w | {pk} |", "|---|" + "---|" * len(PUNK_KEYS)]  # fmt: skip
    for r in g["fast_rows"]:
        lines.append(f"| {r['w']:g} | {_cells(r, PUNK_KEYS)} |")
    lines += ["", "**Accessories each method helps most** (recall unguided -> guided):", ""]
    for method, items in res["helped"].items():
        lines.append(f"- {method}: " + ", ".join(f"{a} {b:.2f}->{v:.2f}" for a, b, v in items))
    return "\n".join(lines) + "\n"


def run_curves_part(work: Path, quick: bool, reuse: bool, times: dict, paths: dict) -> dict:
    """The whole part: curves, guidance comparison, picked weight, grid, figures; returns the results."""
    curves = learning_curves(work, quick, reuse, times)
    curve_run = Path(curves["punks"]["run"])
    guide = guidance_comparison(work, curve_run, Path(curves["classifiers"]["punks"]), quick)
    best = pick_weight(guide["rows"], curves["punks"]["floor"]["fid_cryptopunks_clf"])
    s = GUIDE_QUICK if quick else GUIDE_FULL
    punks_grid(curve_run, guide["expert_step"], best["w"], paths["grid"], s["conditions"], s["per_condition"])
    curves_figure(paths["curves"], curves)
    from diffguide.plots.images import save_w_sweep_plot

    rows = guide["rows"]
    base = [r for r in rows if r["guidance"] == "none"]
    swept = [r for r in rows if r["guidance"] in ("cfg", "auto") or "+ auto" in r["guidance"]]
    sweep = [dict(r, guidance=k) for r in base for k in ("cfg", "auto")] + swept
    save_w_sweep_plot(paths["sweep"], sweep, ["accessory_recall", "accessories_exact", "fid_cryptopunks_clf",
                      "recall_cryptopunks_clf"], title="punks-cfg: CFG vs autoguidance, 400 samples")  # fmt: skip
    return {"curves": curves, "guidance": guide, "picked": f"{best['guidance']} w={best['w']:g}",
            "picked_w": best["w"], "helped": helped_accessories(rows),
            "figures": {k: str(v) for k, v in paths.items()}}  # fmt: skip
