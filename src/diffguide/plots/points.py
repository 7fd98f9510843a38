"""Figures for runs: scatter plots of 2D samples over the ground truth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffguide.io import SOFTWARE_TAG, atomic_write_file, file_format
from diffguide.models.runs import load_run
from diffguide.plots import images as image_figures
from diffguide.samplers.generation import sample_run


def density_image(mixture, lim: float, res: int = 300, sigma: float = 0.0, cond=None):
    """log-density of a mixture on a res x res grid over [-lim, lim]^2 (for imshow)."""
    ax = torch.linspace(-lim, lim, res, dtype=torch.float64)
    xx, yy = torch.meshgrid(ax, ax, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    c = None if cond is None else torch.full((len(pts),), int(cond))
    return mixture.log_prob(pts, sigma, c).reshape(res, res).numpy()


def scatter_2d(
    ax, points, title: str = "", lim: float | None = None, color="C0", s: float = 1.0, mixture=None
):
    """Samples as a scatter plot, over the mixture's density when given."""
    pts = np.asarray(points)
    finite = np.isfinite(pts).all(1)
    if not finite.all():  # a diverged model: plot what is finite and say how much is not
        title = f"{title} ({int((~finite).sum())} non-finite samples not shown)"
        if not isinstance(color, str):
            color = [c for c, ok in zip(color, finite) if ok]
        pts = pts[finite]
    lim = lim or (float(np.quantile(np.abs(pts), 0.995)) * 1.1 if len(pts) else 1.0)
    lim = lim if np.isfinite(lim) and lim > 0 else 1.0
    if mixture is not None:
        img = density_image(mixture, lim, res=200)
        ax.imshow(np.exp(img), extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys", alpha=0.6)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, c=color, alpha=0.5, linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def save_scatter(path: Path, points, title: str = "", mixture=None, labels=None) -> Path:
    """A single scatter PNG of 2D points (coloured by label when given)."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    color = "C0" if labels is None else [f"C{int(c) % 10}" for c in np.asarray(labels)]
    scatter_2d(ax, points, title, mixture=mixture, color=color, s=2.0)
    fig.tight_layout()
    tag = {"metadata": {"Software": SOFTWARE_TAG}} if file_format(path) == "png" else {}
    atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path), **tag))
    plt.close(fig)
    return Path(path)


def write_run_figure(run_dir: Path, n: int | None = None, seed: int = 0) -> Path | None:
    """samples.png for a finished run: 2D scatter (images issue adds grids for image runs)."""

    run = load_run(run_dir)
    n = n or run.config.sample.n
    if run.dataset.kind != "points" or run.dataset.shape != (2,):
        return image_figures.write_run_grid(run, run_dir / "samples.png", seed=seed)
    cond = None
    labels = None
    if run.num_classes:
        labels = torch.arange(n) % run.num_classes
        cond = labels
    x = sample_run(run, n, seed=seed, cond=cond)
    title = f"{run.config.name}: {n} samples, {run.config.sample.sampler} {run.config.sample.steps} steps, step {run.step}"
    return save_scatter(Path(run_dir) / "samples.png", x, title, mixture=run.dataset.mixture, labels=labels)
