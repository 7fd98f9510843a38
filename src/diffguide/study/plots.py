"""Figures of the guidance study: the study panel, the weight sweep and the S-curve vector fields.

A trained denoiser gives a score field, not a density. To draw "the main model's density" at a noise
level, the model's score on a grid is integrated into a log-density by least squares (the potential
phi whose finite-difference gradient best matches the score: a Poisson problem, solved exactly with a
sparse solver). The ratio panel is then phi_main - phi_guide, the log of the density ratio main/guide
up to a constant, with the score difference s_main - s_guide as arrows: the direction guidance adds.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from diffguide.denoiser import score_from_denoiser  # noqa: E402
from diffguide.io import atomic_write_file, file_format
from diffguide.plots.points import density_image  # noqa: E402

CLASS_COLORS = ["#1f5fa8", "#c2410c", "#15803d", "#7e22ce"]


def grid_points(center, half: float, res: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A res x res grid over a square window: (xs [res], ys [res], points [res*res, 2], row-major in y)."""
    cx, cy = float(center[0]), float(center[1])
    xs = np.linspace(cx - half, cx + half, res)
    ys = np.linspace(cy - half, cy + half, res)
    xx, yy = np.meshgrid(xs, ys, indexing="xy")
    return xs, ys, torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=torch.float32)


@torch.no_grad()
def score_on(denoiser, points: torch.Tensor, sigma: float, cond=None) -> np.ndarray:
    """The model's score (D(x, sigma) - x) / sigma^2 at the points: [N, 2] numpy."""
    sig = torch.full((len(points),), float(sigma))
    c = None if cond is None else torch.full((len(points),), int(cond), dtype=torch.long)
    return score_from_denoiser(denoiser(points, sig, c).float(), points, sig).numpy()


def integrate_score(score: np.ndarray, res: int, h: float) -> np.ndarray:
    """log-density phi [res, res] (mean 0) whose grid gradient best fits the score field [res*res, 2].

    Least squares over the edges of the grid: (phi[i, j+1] - phi[i, j]) / h = mean of s_x at the two
    nodes, likewise along y; the normal equations are a graph Laplacian, solved after fixing the mean.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    s = score.reshape(res, res, 2)
    idx = np.arange(res * res).reshape(res, res)
    rows_a, rows_b, rhs = [], [], []
    # x-edges (along columns j) and y-edges (along rows i)
    rows_a.append(idx[:, :-1].ravel())
    rows_b.append(idx[:, 1:].ravel())
    rhs.append(h * 0.5 * (s[:, :-1, 0] + s[:, 1:, 0]).ravel())
    rows_a.append(idx[:-1, :].ravel())
    rows_b.append(idx[1:, :].ravel())
    rhs.append(h * 0.5 * (s[:-1, :, 1] + s[1:, :, 1]).ravel())
    a, b, r = np.concatenate(rows_a), np.concatenate(rows_b), np.concatenate(rhs)
    m = len(r)
    eq = np.arange(m)
    A = sp.csr_matrix(
        (np.concatenate([-np.ones(m), np.ones(m)]), (np.concatenate([eq, eq]), np.concatenate([a, b]))),
        shape=(m, res * res),
    )
    # phi is defined up to a constant: pin node 0 (one extra equation phi_0 = 0), then centre
    pin = sp.csr_matrix(([1.0], ([0], [0])), shape=(res * res, res * res))
    phi = spsolve((A.T @ A + pin).tocsc(), A.T @ r)
    return (phi - phi.mean()).reshape(res, res)


def _style(ax, title: str, center, half: float) -> None:
    ax.set_xlim(center[0] - half, center[0] + half)
    ax.set_ylim(center[1] - half, center[1] + half)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def _ground(ax, img: np.ndarray, center, half: float) -> None:
    """A log-density image [res, res] over the window as a light grey background (clipped at -9 nats)."""
    extent = (center[0] - half, center[0] + half, center[1] - half, center[1] + half)
    _log_image(ax, img, extent, "Greys", depth=9.0, alpha=0.45)


def density_image_window(mixture, center, half, res, sigma=0.0, cond=None) -> np.ndarray:
    """log p(x; sigma) on a res x res grid over a square window (density_image is centred at 0)."""
    if abs(center[0]) < 1e-12 and abs(center[1]) < 1e-12:
        return density_image(mixture, half, res, sigma, cond)
    _, _, pts = grid_points(center, half, res)
    c = None if cond is None else torch.full((len(pts),), int(cond))
    return mixture.log_prob(pts.double(), sigma, c).reshape(res, res).numpy()


def _scatter(ax, pts, labels=None, s: float = 1.2, alpha: float = 0.55) -> None:
    pts = np.asarray(pts)
    color = "k" if labels is None else [CLASS_COLORS[int(c) % len(CLASS_COLORS)] for c in np.asarray(labels)]
    ax.scatter(pts[:, 0], pts[:, 1], s=s, c=color, alpha=alpha, linewidths=0)


LOG_DEPTH = 12.0  # nats below the maximum shown by log-density images; lower values are clipped


def _log_image(ax, img: np.ndarray, extent, cmap: str, depth: float = LOG_DEPTH, alpha: float = 1.0) -> None:
    """A log-density [res, res] as an image, clipped `depth` nats below its maximum (a linear density
    exp(phi) would show only the highest peak: the rest of a thin structure is many nats lower)."""
    ax.imshow(
        np.clip(img, img.max() - depth, None),
        extent=extent,
        origin="lower",
        cmap=cmap,
        alpha=alpha,
        interpolation="bilinear",
    )


def _arrows(ax, at: np.ndarray, v: np.ndarray, spacing: float, keep=None, color="k") -> None:
    """Arrows v at points `at`, lengths compressed to at most ~0.9 grid spacing: a score is ~1/sigma^2
    far from the data and ~0 on it, so linear lengths would show only the longest few. Length grows
    with |v| up to its 90% quantile (over the kept arrows), then saturates; `keep` masks arrows."""
    keep = np.ones(len(at), bool) if keep is None else np.asarray(keep, bool)
    if not keep.any():
        return
    at, v = at[keep], v[keep]
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    top = max(float(np.quantile(norm, 0.9)), 1e-12)
    v = v / np.maximum(norm, 1e-12) * np.minimum(norm / top, 1.0) * 0.9 * spacing
    ax.quiver(
        at[:, 0],
        at[:, 1],
        v[:, 0],
        v[:, 1],
        color=color,
        angles="xy",
        scale_units="xy",
        scale=1,
        width=0.004,
        headwidth=3.5,
        headlength=4,
        headaxislength=3.5,
        alpha=0.85,
    )


def _spacing(at: np.ndarray) -> float:
    xs = np.unique(np.round(at[:, 0], 9))
    return float(xs[1] - xs[0]) if len(xs) > 1 else 1.0


def _truth_outline(ax, d: dict) -> None:
    """The true 99%-mass region of the zoomed class (the precision metric's region), dashed."""
    bg, (cx, cy), h = d["zoom_background"], d["zoom_center"], d["zoom_half"]
    xs = np.linspace(cx - h, cx + h, bg.shape[1])
    ys = np.linspace(cy - h, cy + h, bg.shape[0])
    ax.contour(xs, ys, bg, levels=[d["zoom_tau"]], colors="k", linewidths=0.9, linestyles="--", alpha=0.7)


def _density_panel(ax, d: dict, key: str, cmap: str, title: str) -> None:
    """A model's log-density (integrated from its score, clipped) with its score arrows."""
    f = d["fields"]
    extent = (f["xs"][0], f["xs"][-1], f["ys"][0], f["ys"][-1])
    _log_image(ax, f["phi_" + key], extent, cmap)
    _truth_outline(ax, d)
    _arrows(ax, f["arrow_at"], f["score_" + key], _spacing(f["arrow_at"]))
    _style(ax, title, d["zoom_center"], d["zoom_half"])


def _ratio_panel(ax, d: dict, title: str) -> None:
    """log(p_main / p_guide) where the main model puts non-negligible density (elsewhere it is the ratio
    of two tails, which sampling never visits), with the score difference as arrows."""
    f = d["fields"]
    phi = f["phi_main"] - f["phi_guide"]
    support = f["phi_main"] >= f["phi_main"].max() - LOG_DEPTH
    ratio = phi - np.median(phi[support])
    lim = float(np.quantile(np.abs(ratio[support]), 0.98)) or 1.0
    extent = (f["xs"][0], f["xs"][-1], f["ys"][0], f["ys"][-1])
    ax.imshow(
        ratio, extent=extent, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="bilinear"
    )
    low = f["phi_main"].max() - LOG_DEPTH
    if not support.all():  # grey out (smoothly) where the main model has no density
        ax.contourf(
            f["xs"], f["ys"], f["phi_main"], levels=[f["phi_main"].min() - 1, low], colors=["#e5e5e5"]
        )
    _truth_outline(ax, d)
    # arrows only where the main model has density: that is where guidance acts on samples
    at = f["arrow_at"]
    ix = np.clip(np.searchsorted(f["xs"], at[:, 0]), 0, len(f["xs"]) - 1)
    iy = np.clip(np.searchsorted(f["ys"], at[:, 1]), 0, len(f["ys"]) - 1)
    _arrows(ax, at, f["score_main"] - f["score_guide"], _spacing(at), keep=support[iy, ix])
    _style(ax, title, d["zoom_center"], d["zoom_half"])


def _trajectory_panel(ax, d: dict, key: str, title: str) -> None:
    """Sampling paths in the zoom window over the exact density with its 99%-mass contour; end points
    inside that region black, outside red (the precision metric, one trajectory at a time)."""
    zc, zh, bg = d["zoom_center"], d["zoom_half"], d["zoom_background"]
    extent = (zc[0] - zh, zc[0] + zh, zc[1] - zh, zc[1] + zh)
    _log_image(ax, bg, extent, "Greys", alpha=0.5)
    xs = np.linspace(extent[0], extent[1], bg.shape[1])
    ys = np.linspace(extent[2], extent[3], bg.shape[0])
    ax.contour(xs, ys, bg, levels=[d["zoom_tau"]], colors="#15803d", linewidths=1.0)
    paths = d["trajectories"][key]  # [T, M, 2]
    inside = d["trajectory_inside"][key]
    for j in range(paths.shape[1]):
        ax.plot(paths[:, j, 0], paths[:, j, 1], "-", color="#555", lw=0.7, alpha=0.6)
    ax.scatter(paths[0, :, 0], paths[0, :, 1], s=6, c="#aaa", linewidths=0, zorder=3)
    end = paths[-1]
    ax.scatter(end[inside, 0], end[inside, 1], s=12, c="k", linewidths=0, zorder=4)
    ax.scatter(end[~inside, 0], end[~inside, 1], s=16, c="#dc2626", linewidths=0, zorder=4)
    _style(
        ax, f"{title}\n{int(inside.sum())} of {len(inside)} end inside the 99% region (green line)", zc, zh
    )


def study_panel(path: Path, d: dict) -> Path:
    """The 3 x 3 study panel (see study.tree_figures for the entries of `d`)."""
    mix, lim, zc, zh = d["mixture"], d["lim"], d["zoom_center"], d["zoom_half"]
    full_bg = density_image_window(mix, (0.0, 0.0), lim, 200)
    fig, axes = plt.subplots(3, 3, figsize=(13.5, 14.2), dpi=110)
    top = [
        ("Ground truth", d["ground_truth"], d["ground_truth_labels"]),
        (d["titles"]["none"], d["samples"]["none"], d["labels"]),
        (d["titles"]["autoguidance"], d["samples"]["autoguidance"], d["labels"]),
        (d["titles"]["cfg"], d["samples"]["cfg"], d["labels"]),
    ]
    for ax, (title, pts, labels) in zip([*axes[0], axes[1, 0]], top):
        _ground(ax, full_bg, (0.0, 0.0), lim)
        _scatter(ax, pts, labels)
        _style(ax, title, (0.0, 0.0), lim)
    for a in (axes[0, 0], axes[1, 0]):
        a.add_patch(Rectangle((zc[0] - zh, zc[1] - zh), 2 * zh, 2 * zh, fill=False, ec="k", lw=1.0, ls="--"))
    sig = d["fields"]["sigma"]
    note = "dashed: the true 99% region"
    _density_panel(
        axes[1, 1],
        d,
        "main",
        "Greens",
        f"Main model (expert): log p(x | A; sigma={sig:g}),\nits score; {note}",
    )
    _density_panel(
        axes[1, 2], d, "guide", "Reds", f"Guide (amateur): log p(x | A; sigma={sig:g}),\nits score"
    )
    _ratio_panel(
        axes[2, 0],
        d,
        "log p_main / p_guide (red: main higher);\narrows: score difference = what guidance adds",
    )
    _trajectory_panel(axes[2, 1], d, "none", "Trajectories without guidance (zoom)")
    _trajectory_panel(
        axes[2, 2], d, "autoguidance", f"Trajectories with autoguidance, w={d['w_trajectories']:g}"
    )
    fig.suptitle(d["suptitle"], fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path)))
    plt.close(fig)
    return Path(path)


def _place_labels(ax, items: list[tuple[float, float, str, str]], markers: list, lines: list) -> None:
    """Annotate each (x, y, text, color) at the nearest of a few offsets around its point whose text box
    overlaps nothing: no earlier label or the legend (hard), no marker (x, y) or curve (a list of (x, y)
    vertices) (soft: when every offset touches one, the least-overlapping offset is taken)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform

    def box(xy, r):  # r: half-size in pixels of the box kept free around a point
        px, py = to_px(xy)
        return (px - r, py - r, px + r, py + r)

    taken = [box(xy, 7.0) for xy in markers]
    for curve in lines:  # points every few pixels along each segment
        for p, q in zip(curve[:-1], curve[1:]):
            taken += [
                box((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])), 2.0) for t in np.linspace(0, 1, 25)
            ]
    labels = []  # boxes no label may cover: the legend, then each placed label
    if ax.get_legend() is not None:
        legend = ax.get_legend().get_window_extent(renderer)
        labels.append((legend.x0, legend.y0, legend.x1, legend.y1))
    ring = [(5, 4), (5, -11), (-6, 5), (-6, -12), (8, -3), (-8, -3), (0, 9), (0, -15)]
    offsets = [(dx * k, dy * k) for k in (1, 2, 3) for dx, dy in ring]  # nearest first, then farther out

    def overlap(bb, o):
        return max(0.0, min(bb[2], o[2]) - max(bb[0], o[0])) * max(0.0, min(bb[3], o[3]) - max(bb[1], o[1]))

    for x, y, text, color in items:
        best = None
        for dx, dy in offsets:
            ha = "right" if dx < 0 else ("center" if dx == 0 else "left")
            t = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, color=color, ha=ha
            )
            e = t.get_window_extent(renderer)
            bb = (e.x0, e.y0, e.x1, e.y1)
            # labels must not cover labels; markers and curves only preferably
            cost = 1e6 * sum(overlap(bb, o) for o in labels) + sum(overlap(bb, o) for o in taken)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, bb)
            else:
                t.remove()
            if cost == 0:
                break
        labels.append(best[2])


def samples_figure(path: Path, panels: dict, title: str) -> Path:
    """One scatter per entry of panels {title: (points [N, 2], labels [N] or None)}, on shared axes."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), dpi=110, squeeze=False)
    everything = np.concatenate([np.asarray(p) for p, _ in panels.values()])
    everything = everything[np.isfinite(everything).all(1)]
    lo, hi = np.quantile(everything, [0.001, 0.999], axis=0) if len(everything) else (-np.ones(2), np.ones(2))
    center, half = tuple((lo + hi) / 2), max(float((hi - lo).max()) / 2 * 1.1, 1e-6)
    for ax, (name, (pts, labels)) in zip(axes[0], panels.items()):
        _scatter(ax, np.asarray(pts), None if labels is None else np.asarray(labels))
        _style(ax, name, center, half)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path)))
    plt.close(fig)
    return Path(path)


def sweep_figure(path: Path, sweep: list[dict], none: dict, truth: dict, reported: dict) -> Path:
    """Precision against coverage as w grows, one curve per method (the quality/variety trade-off).

    Circled: the w the selection rule chose, for the methods where some w helped."""
    fig, ax = plt.subplots(figsize=(6.8, 5.4), dpi=120)
    styles = {
        "cfg": ("C3", "s"),
        "cfg-interval": ("C1", "D"),
        "autoguidance": ("C2", "o"),
        "cfg+autoguidance": ("C4", "^"),
    }
    labels, points, curves = (
        [],
        [(none["coverage"], none["precision"]), (truth["coverage"], truth["precision"])],
        [],
    )
    for method, (color, marker) in styles.items():
        rows = [r for r in sweep if r["method"] == method]
        if not rows:
            continue
        rows = [{"w": 1.0, **{k: none[k] for k in ("precision", "coverage")}}, *rows]
        ax.plot([r["coverage"] for r in rows], [r["precision"] for r in rows], "-", color=color,
                marker=marker, label=method, lw=1.5, ms=5)  # fmt: skip
        points += [(r["coverage"], r["precision"]) for r in rows]
        curves.append([(r["coverage"], r["precision"]) for r in rows])
        labels += [(r["coverage"], r["precision"], f"w={r['w']:g}", color) for r in rows[1:]]
        c = reported.get(method)
        if c and c.get("helped", True) and c["w"] != 1.0:
            ax.scatter([c["coverage"]], [c["precision"]], s=140, facecolors="none", edgecolors=color, lw=1.5)
    ax.scatter(
        [none["coverage"]], [none["precision"]], marker="*", s=160, c="k", label="no guidance", zorder=5
    )
    ax.scatter(
        [truth["coverage"]],
        [truth["precision"]],
        marker="P",
        s=90,
        c="C0",
        label="ground-truth samples (same n)",
        zorder=5,
    )
    ax.set_xlabel("coverage (1 - TV of component occupancy)  ->  more variety")
    ax.set_ylabel("precision (inside the 99%-mass region)  ->  higher quality")
    ax.set_title(
        "Guidance weight sweep: quality vs variety\n(circled: the w the stated rule chose; none circled: no w helped)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _place_labels(ax, labels, points, curves)
    atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path)))
    plt.close(fig)
    return Path(path)


def scurve_figure(path: Path, d: dict) -> Path:
    """The S-curve autoguidance experiment: data, the expert/amateur/difference fields at one sigma, samples +- guidance."""
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 9.2), dpi=110)
    lim = d["lim"]
    c = (0.0, 0.0)
    ax = axes[0, 0]
    _scatter(ax, d["data"], s=1.0, alpha=0.35)
    _style(ax, "S-curve training data", c, lim)
    at = d["arrow_at"]
    for ax, key, title, color in (
        (axes[0, 1], "expert", f"Expert D1 ({d['expert_steps']} steps): D1(x) - x", "C2"),
        (axes[0, 2], "amateur", f"Amateur D0 ({d['amateur_steps']} steps): D0(x) - x", "C3"),
    ):
        _scatter(ax, d["data"], s=0.6, alpha=0.15)
        v = d["fields"][key]  # drawn to scale: each arrow ends at the model's denoised point D(x)
        ax.quiver(at[:, 0], at[:, 1], v[:, 0], v[:, 1], color=color, angles="xy", scale_units="xy", scale=1,
                  width=0.004)  # fmt: skip
        _style(ax, f"{title}\nsigma = {d['sigma']:g}; arrow tip = D(x)", c, lim)
    ax = axes[1, 0]
    _scatter(ax, d["data"], s=0.6, alpha=0.25)
    fine = d["difference_at"]
    _arrows(ax, fine, d["fields"]["difference"], _spacing(fine), keep=d["difference_near"], color="C0")
    _style(
        ax,
        f"Guidance direction D1(x) - D0(x), sigma = {d['sigma']:g}\n"
        "within 2 sigma of the data (lengths capped)",
        c,
        lim,
    )
    for ax, key, title in (
        (axes[1, 1], "none", "Samples without guidance (expert alone)"),
        (axes[1, 2], "autoguidance", f"Samples with autoguidance, w={d['w']:g}"),
    ):
        _scatter(ax, d["data"], s=0.6, alpha=0.12)
        pts = np.asarray(d["samples"][key])
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, c="C1" if key == "none" else "C2", alpha=0.6, linewidths=0)
        _style(ax, title, c, lim)
    fig.suptitle(d["suptitle"], fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path)))
    plt.close(fig)
    return Path(path)


BENCH_MARKERS = "osD^v<>pPXh*d"
BENCH_AXES = {  # row of the figure -> (x metric, its label)
    "coverage": "coverage (1 - TV of component occupancy)  ->  more variety",
    "sliced_w2": "sliced W2 to the truth  <-  closer to the true distribution",
}


def _bench_panel(ax, d: dict, x_key: str) -> None:
    """One dataset's curves: precision against x_key as w grows, from each sampler's unguided point."""
    cmap = plt.get_cmap("tab20")
    for i, (method, m) in enumerate(d["methods"].items()):
        color, marker = cmap(i % 20), BENCH_MARKERS[i % len(BENCH_MARKERS)]
        rows = [d["unguided"][m["sampler"]], *(r for r in d["sweep"] if r["method"] == method)]
        ax.plot([r[x_key] for r in rows], [r["precision"] for r in rows], "-", color=color, marker=marker,
                ms=4, lw=1.2, label=method)  # fmt: skip
        if m["helped"]:
            ax.scatter([m[x_key]], [m["precision"]], s=130, facecolors="none", edgecolors=color, lw=1.5)
    for j, (sampler, u) in enumerate(d["unguided"].items()):
        ax.scatter([u[x_key]], [u["precision"]], marker="*", s=170, c="k", zorder=5)
        ax.annotate(f"no guidance ({sampler})", (u[x_key], u["precision"]), fontsize=7,
                    xytext=(6, -10 - 10 * j), textcoords="offset points")  # fmt: skip
    t = d["ground_truth"]
    ax.scatter(
        [t[x_key]], [t["precision"]], marker="P", s=90, c="C0", zorder=5, label="ground truth (same n)"
    )
    ax.set_xlabel(BENCH_AXES[x_key], fontsize=9)
    ax.set_ylabel("precision (inside the 99%-mass region)", fontsize=9)
    ax.grid(alpha=0.3)


def bench_figure(path: Path, metrics: dict) -> Path:
    """The guidance benchmark, one column per dataset: precision against coverage (top) and against
    sliced W2 (bottom) as w grows, one curve per method starting at the unguided point of its sampler;
    circled: the w the selection rule chose."""
    datasets = metrics["datasets"]
    fig, axes = plt.subplots(
        2, len(datasets), figsize=(6.0 * len(datasets) + 2.0, 10.0), dpi=100, squeeze=False
    )
    for col, (name, d) in enumerate(datasets.items()):
        for row, x_key in enumerate(BENCH_AXES):
            _bench_panel(axes[row][col], d, x_key)
        axes[0][col].set_title(f"{name} ({d['components']} components)", fontsize=10)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Guidance methods, weight sweep (circled: the w the selection rule chose)", fontsize=11)
    fig.tight_layout()
    atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path)))
    plt.close(fig)
    return Path(path)
