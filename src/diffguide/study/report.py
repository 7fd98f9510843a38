"""report.md of the guidance study and the metrics table printed by `diffguide demo`."""

from __future__ import annotations

from pathlib import Path

from diffguide.io import atomic_write_text

ROWS = (
    ("ground truth (same n)", "ground_truth"),
    ("no guidance", "none"),
    ("CFG", "cfg"),
    ("CFG on an interval", "cfg_interval"),
    ("autoguidance", "autoguidance"),
    ("CFG + autoguidance", "cfg+autoguidance"),
)


COLUMNS = (("precision", "{:.3f}"), ("coverage", "{:.3f}"), ("mean log p", "{:.2f}"), ("sliced W2", "{:.4f}"))
KEYS = {
    "precision": "precision", "coverage": "coverage", "mean log p": "mean_logp", "sliced W2": "sliced_w2",
    "distance to data": "distance_to_data",
}  # fmt: skip


def metric_columns(rows) -> tuple:
    """The metric columns: the four exact ones, plus the distance to the data when the rows have it."""
    if any("distance_to_data" in r for r in rows):
        return (*COLUMNS, ("distance to data", "{:.4f}"))
    return COLUMNS


def metric_cells(m: dict, columns) -> str:
    """'| 0.912 | 0.950 | ...' with '-' for a metric the data cannot give (no exact density)."""
    values = [m.get(KEYS[name]) for name, _ in columns]
    return " | ".join("-" if v is None else fmt.format(v) for v, (_, fmt) in zip(values, columns))


def _head(first: str, columns) -> list[str]:
    names = [name for name, _ in columns]
    return [f"| {first} | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + first.count("|") + 1)]


def metrics_table(metrics: dict) -> str:
    """The headline table (markdown, also readable as plain text)."""
    columns = metric_columns([m for _, key in ROWS if (m := metrics.get(key))])
    lines = _head("method | w", columns)
    for label, key in ROWS:
        m = metrics.get(key)
        if not m:
            continue
        w = "-" if m.get("w") is None else f"{m['w']:g}"
        if m.get("helped") is False:
            best = "best precision" if m.get("precision") is not None else "lowest sliced W2"
            w = f"{w} (no w helped: the sweep's {best})"
        if key == "cfg+autoguidance" and m.get("w_cfg") is not None:
            w = f"{w} (auto) + {m['w_cfg']:g} (cfg)"
        if key == "cfg_interval" and m.get("interval"):
            w = f"{w}, sigma in [{m['interval'][0]:g}, {m['interval'][1]:g}]"
        lines.append(f"| {label} | {w} | {metric_cells(m, columns)} |")
    return "\n".join(lines)


def sweep_table(metrics: dict) -> str:
    """Markdown: every (method, w) of a sweep (`metrics["sweep"]`), for the demo and the guidance benchmark."""
    columns = metric_columns(metrics["sweep"])
    lines = _head("method | w", columns)
    for r in metrics["sweep"]:
        lines.append(f"| {r['method']} | {r['w']:g} | {metric_cells(r, columns)} |")
    return "\n".join(lines)


def _data_line(metrics: dict) -> str:
    d = metrics.get("data") or {}
    if not d.get("file"):
        return (
            "Data: the two-class tree mixture (`tree`), an exact Gaussian mixture, so every metric below is "
            "computed\nfrom the true density."
        )
    what = "a Gaussian mixture (exact density)" if d["exact"] else "a point cloud (no density)"
    skipped = "".join(f"\n- skipped: {k}: {v}." for k, v in d["skipped"].items())
    return f"Data: your file `{d['file']}`, {what}, {d['classes'] or 'no'} classes.{skipped}\n"


def _header(settings, expert, amateur, metrics: dict) -> str:
    e, a = expert.config, amateur.config
    return f"""# Guidance study: no guidance, classifier-free guidance and autoguidance

{_data_line(metrics)} Seed {settings.seed}. {settings.n_samples} samples per method, the same per-sample
seeds and the same class labels (in the mixture's class proportions) for every method;
sampler {settings.sampler}, {settings.sampler_steps} steps, Karras grid, sigma_max = {settings.sigma_max:g}.

- **expert**: `{e.name}`, MLP width {e.model.width} x depth {e.model.depth}, {expert.step} steps, batch
  {e.train.batch_size}, class-conditional with label dropout p = {e.train.p_uncond} (so the same net with
  the null label is the CFG guide).
- **amateur** (autoguidance guide): `{a.name}`, width {a.model.width} x depth {a.model.depth},
  {amateur.step} steps, same data, conditioning and loss.

Guidance weight convention: guide + w (main - guide); w = 1 is no guidance.

"""


def _results(metrics: dict, settings) -> str:
    if not (metrics.get("data") or {}).get("exact", True):
        return f"""## Results

{metrics_table(metrics)}

Chosen w: {metrics["selection_rule"]}.

- sliced W2: sliced Wasserstein-2 distance to {settings.n_reference} (at most) points of the data;
- distance to data: the mean distance of a sample to its nearest data point (lower: closer to the data;
  it keeps falling as guidance concentrates the samples, so it measures quality, not variety).

### The whole sweep

{sweep_table(metrics)}

![samples](samples.png)

"""
    return f"""## Results

{metrics_table(metrics)}

Chosen w: {metrics["selection_rule"]}.

- precision: fraction of samples inside the region holding 99% of the true mass of p(x) (ideal 0.99);
- coverage: 1 - total variation between the samples' component-occupancy histogram and that of
  {settings.n_reference} ground-truth samples (ideal 1 for infinitely many samples; the "ground truth"
  row shows what {settings.n_samples} true samples score, the finite-sample ceiling);
- mean log p: mean exact log-density of the samples; sliced W2: sliced Wasserstein-2 distance to
  ground-truth samples (its ground-truth row is the finite-sample floor).

Per-class metrics (against p(x | class)) are in metrics.json under "per_class".

### The whole sweep

{sweep_table(metrics)}

![weight sweep](weight_sweep.png)

"""


def _figures(metrics: dict, settings) -> str:
    if "study_panel" not in metrics["figures"]:
        return ""  # data without a density: samples.png only, shown with the results
    fd = metrics["figures_detail"]
    ends = fd["trajectory_ends_inside"]
    return f"""## Figures

![study panel](study_panel.png)

`study_panel.png`: top row: ground truth, samples without guidance, with autoguidance (w = {fd["w_shown"]["autoguidance"]:g});
middle: CFG (w = {fd["w_shown"]["cfg"]:g}), then the zoom window (dashed box: the first fork of class A) at
sigma = {settings.field_sigma:g}: the main model's log-density with its score arrows, and the guide's (the
dashed line in the zoom panels is the true 99%-mass region of class A); bottom: the log density ratio
main / guide with the score difference (the direction autoguidance pushes:
D_w - D_1 = (w - 1) sigma^2 (s_main - s_guide)), then sampling trajectories in the window without and
with autoguidance at w = {fd["w_shown"]["trajectories"]:g}, started from blurred ground-truth points at
sigma = {4 * settings.field_sigma:g} (grey dots: start; end points black inside the 99% region, red
outside: {ends["none"][0]} of {ends["none"][1]} without guidance, {ends["autoguidance"][0]} of
{ends["autoguidance"][1]} with it).

How the densities are drawn: a trained denoiser gives a score field, not a density. Each model's
score (D(x, sigma) - x) / sigma^2 is evaluated on a {settings.field_res} x {settings.field_res} grid and
integrated into a log-density by least squares (the potential whose finite-difference gradient best
fits the score; a sparse Poisson solve). It is the model's own density up to a constant (exact if the
learned score is a gradient field), so the ratio panel is the difference of two such potentials. The
log-densities are drawn down to 12 nats below their maximum (a linear density would show only the
highest peak), the ratio only where the main model's log-density is within those 12 nats; arrow
lengths grow with the score up to its 90% quantile, then saturate. The grey background in sample
panels is the exact mixture density.

"""


def _scurve(metrics: dict) -> str:
    sc = metrics["scurve"]
    if sc is None:
        return ""
    return f"""![S-curve](scurve_autoguidance.png)

`scurve_autoguidance.png` (the S-curve autoguidance experiment): one net trained {sc["expert_steps"]} steps on the
S-curve (expert D1) and its own snapshot at step {sc["amateur_steps"]} (amateur D0), VE SDE with
{sc["sampler"]}. The three fields at one noise level are the displacements D1(x) - x and D0(x) - x
(sigma^2 times each score; arrow tips are the denoised points) and their difference D1 - D0 (the
autoguidance direction), drawn only within 2 sigma of the data, where the noisy data has density.
Without -> with autoguidance at w = {sc["w"]:g}: mean distance of a sample to the nearest data point
{sc["distance_to_data_none"]:.4f} -> {sc["distance_to_data_autoguidance"]:.4f} (samples pulled onto the
curve: quality), sliced W2 to the data {sc["sliced_w2_none"]:.4f} -> {sc["sliced_w2_autoguidance"]:.4f}
(the distribution along the curve is distorted: the variety side of the trade-off).

"""


def _timings(metrics: dict, expert) -> str:
    e = expert.config
    timing = "\n".join(f"| {k} | {v:.1f} |" for k, v in metrics["timings_s"].items())
    return f"""## Timings (wall-clock seconds)

| phase | s |
|---|---|
{timing}

Runs are in `runs/`; `runs/{e.name}/guidance.json` names the amateur, so
`diffguide sample {Path(str(expert.path))} --guidance auto --w 2 --class 0 --out x.npz` samples with it.
"""


def write_report(path: Path, metrics: dict, settings, expert, amateur) -> Path:
    """report.md: what was trained, the table, the rule, the figures and how to read them, timings."""
    parts = (
        _header(settings, expert, amateur, metrics),
        _results(metrics, settings),
        _figures(metrics, settings),
        _scurve(metrics),
        _timings(metrics, expert),
    )
    atomic_write_text(Path(path), "".join(parts))
    return Path(path)
