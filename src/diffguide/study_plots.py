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

from .denoiser import score_from_denoiser  # noqa: E402
from .figures import density_image  # noqa: E402

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
    ax.imshow(
        np.clip(img, img.max() - 9, None),
        extent=(center[0] - half, center[0] + half, center[1] - half, center[1] + half),
        origin="lower",
        cmap="Greys",
        alpha=0.45,
        interpolation="bilinear",
    )


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


def _field_panel(ax, phi, xs, ys, arrows_at, arrows, cmap, title, center, half, diverging=False) -> None:
    extent = (xs[0], xs[-1], ys[0], ys[-1])
    if diverging:
        lim = np.quantile(np.abs(phi - np.median(phi)), 0.98)
        ax.imshow(phi - np.median(phi), extent=extent, origin="lower", cmap=cmap, vmin=-lim, vmax=lim)
    else:
        ax.imshow(np.exp(phi - phi.max()), extent=extent, origin="lower", cmap=cmap)
    ax.contour(xs, ys, phi, levels=12, colors="k", linewidths=0.3, alpha=0.35)
    ax.quiver(arrows_at[:, 0], arrows_at[:, 1], arrows[:, 0], arrows[:, 1], color="k", width=0.004, alpha=0.8)
    _style(ax, title, center, half)


def study_panel(path: Path, d: dict) -> Path:
    """The 3 x 3 study panel (see study.run_study for the entries of `d`)."""
    mix, lim, zc, zh = d["mixture"], d["lim"], d["zoom_center"], d["zoom_half"]
    full_bg = density_image_window(mix, (0.0, 0.0), lim, 200)
    zoom_bg = density_image_window(mix, zc, zh, 160, cond=d["zoom_class"])
    fig, axes = plt.subplots(3, 3, figsize=(13.5, 13.5), dpi=110)
    top = [
        ("Ground truth", d["ground_truth"], d["ground_truth_labels"]),
        (d["titles"]["none"], d["samples"]["none"], d["labels"]),
        (d["titles"]["autoguidance"], d["samples"]["autoguidance"], d["labels"]),
    ]
    for ax, (title, pts, labels) in zip(axes[0], top):
        _ground(ax, full_bg, (0.0, 0.0), lim)
        _scatter(ax, pts, labels)
        _style(ax, title, (0.0, 0.0), lim)
    ax = axes[1, 0]
    _ground(ax, full_bg, (0.0, 0.0), lim)
    _scatter(ax, d["samples"]["cfg"], d["labels"])
    _style(ax, d["titles"]["cfg"], (0.0, 0.0), lim)
    for a in (axes[0, 0], axes[1, 0]):
        a.add_patch(Rectangle((zc[0] - zh, zc[1] - zh), 2 * zh, 2 * zh, fill=False, ec="k", lw=1.0, ls="--"))
    f = d["fields"]
    sig = f["sigma"]
    _field_panel(
        axes[1, 1],
        f["phi_main"],
        f["xs"],
        f["ys"],
        f["arrow_at"],
        f["score_main"],
        "Greens",
        f"Main model p(x; sigma={sig:g}) and its score (zoom)",
        zc,
        zh,
    )
    _field_panel(
        axes[1, 2],
        f["phi_guide"],
        f["xs"],
        f["ys"],
        f["arrow_at"],
        f["score_guide"],
        "Reds",
        f"Guide (amateur) p(x; sigma={sig:g}) and its score",
        zc,
        zh,
    )
    _field_panel(
        axes[2, 0],
        f["phi_main"] - f["phi_guide"],
        f["xs"],
        f["ys"],
        f["arrow_at"],
        f["score_main"] - f["score_guide"],
        "RdBu_r",
        "log density ratio main / guide; arrows: score difference",
        zc,
        zh,
        diverging=True,
    )
    for ax, key, title in (
        (axes[2, 1], "none", "Trajectories without guidance (zoom)"),
        (axes[2, 2], "autoguidance", f"Trajectories with autoguidance, w={d['w_auto']:g} (zoom)"),
    ):
        _ground(ax, zoom_bg, zc, zh)
        paths = d["trajectories"][key]  # [T, M, 2]
        for j in range(paths.shape[1]):
            ax.plot(paths[:, j, 0], paths[:, j, 1], "-", color="#444", lw=0.7, alpha=0.6)
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=6, c="#999", linewidths=0, zorder=3)
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=9, c="k", linewidths=0, zorder=4)
        _style(ax, title, zc, zh)
    fig.suptitle(d["suptitle"], fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def sweep_figure(path: Path, sweep: list[dict], none: dict, truth: dict, chosen: dict) -> Path:
    """Precision against coverage as w grows, one curve per method (the quality/variety trade-off)."""
    fig, ax = plt.subplots(figsize=(6.5, 5.2), dpi=120)
    styles = {
        "cfg": ("C3", "s"),
        "cfg-interval": ("C1", "D"),
        "autoguidance": ("C2", "o"),
        "cfg+autoguidance": ("C4", "^"),
    }
    for method, (color, marker) in styles.items():
        rows = [r for r in sweep if r["method"] == method]
        if not rows:
            continue
        rows = [{"w": 1.0, **{k: none[k] for k in ("precision", "coverage")}}, *rows]
        xs = [r["coverage"] for r in rows]
        ys = [r["precision"] for r in rows]
        ax.plot(xs, ys, "-", color=color, marker=marker, label=method, lw=1.5, ms=5)
        for r in rows[1:]:
            ax.annotate(
                f"w={r['w']:g}",
                (r["coverage"], r["precision"]),
                fontsize=7,
                color=color,
                xytext=(4, 3),
                textcoords="offset points",
            )
        if method in chosen:
            c = chosen[method]
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
        "Guidance weight sweep: quality vs variety\n(circled: the w chosen by the stated rule)", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def scurve_figure(path: Path, d: dict) -> Path:
    """S-curve (seed 000): data, the expert/amateur/difference fields at one sigma, samples +- guidance."""
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
        (axes[1, 0], "difference", "Guidance direction D1(x) - D0(x) (x4)", "C0"),
    ):
        _scatter(ax, d["data"], s=0.6, alpha=0.15)
        v = d["fields"][key] * (4 if key == "difference" else 1)
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
        )
        _style(ax, f"{title}\nsigma = {d['sigma']:g}", c, lim)
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
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
