"""What the Generate and Compare pages compute, as plain functions (no Streamlit here).

A guidance choice becomes a GuidanceSpec and one denoiser through the guidance builder
(diffguide.guidance.spec, the same as the command line's), a condition choice
becomes the condition the run's network takes, and the samples become PNG bytes for the browser.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffguide.conditioning import null_condition
from diffguide.dashboard import catalog
from diffguide.dashboard.safety import RunsFolder, UnsafePath, check_name
from diffguide.errors import ConfigError, lookup
from diffguide.guidance.spec import (
    EXACT,
    METHODS,
    GuidanceSpec,
    Loaders,
    build_guided,
    model_device,
    sampler_for,
)
from diffguide.samplers.generation import generate, sigma_grid
from diffguide.samplers.grid_file import check_grid_fits, grid_file_warnings, read_grid_file

# what the guidance select shows, from the builder's registry: kind -> title
GUIDANCE_KINDS = {kind: method.title[0].upper() + method.title[1:] for kind, method in METHODS.items()}
ALL_CLASSES = "all classes"
NO_CLASS = "none (unconditional)"
EXACT_CLASSIFIER = "exact Bayes classifier of the ground-truth mixture"
# how the builder's messages name the spec's fields on these pages
DASHBOARD_NAMES = {
    "kind": "guidance",
    "w": "guidance weight w",
    "w_cfg": "CFG weight w",
    "interval": "sigma interval",
    "rescale": "guidance rescale",
    "guide": "guide run",
    "classifier": "classifier",
    "clip": "x0 clip range",
    "schedule": "weight schedule",
    "threshold": "dynamic threshold",
}


def guidance_spec(
    folder: RunsFolder,
    kind: str,
    *,
    w: float = 1.0,
    w_cfg: float | None = None,
    interval: tuple[float, float] | None = None,
    rescale: float = 0.0,
    guide_id: str | None = None,
    classifier_id: str | None = None,
    clip: tuple[float, float] | None = None,
    schedule: tuple[str, float, float] | None = None,
    options: dict | None = None,
    threshold: float | None = None,
) -> GuidanceSpec:
    """The GuidanceSpec of the pages' guidance widgets: the guide ('run' or 'run@ckpt-N', from
    catalog.guide_candidates) and classifier (EXACT_CLASSIFIER or an id of catalog.classifier_candidates)
    become checked paths inside the runs folder. The page names its guides itself: it never follows a
    guidance.json entry the page did not list."""
    fields = lookup("guidance kind", kind, METHODS).fields
    guide = classifier = None
    if "guide" in fields:
        if guide_id is None:
            raise ConfigError("autoguidance needs a guide run: choose a weaker run trained on the same data")
        guide = guide_path(folder, guide_id)
    if "classifier" in fields:
        if classifier_id is None:
            raise ConfigError("classifier guidance needs a classifier: none is available for this run")
        classifier = (
            EXACT if classifier_id == EXACT_CLASSIFIER else catalog.classifier_dir(folder, classifier_id)
        )
    return GuidanceSpec(
        kind=kind,
        w=w,
        w_cfg=w_cfg if "w_cfg" in fields else None,
        interval=interval if "interval" in fields else None,
        rescale=rescale if "rescale" in fields else 0.0,
        guide=guide,
        classifier=classifier,
        clip=clip,
        schedule=schedule if "schedule" in fields else None,
        options=dict(options or {}),
        threshold=threshold,
    )


def guide_path(folder: RunsFolder, guide_id: str) -> Path:
    """The checked run folder of 'run', or checkpoint file of 'run@ckpt-N' (catalog.guide_candidates)."""
    run_id, checkpoint = catalog.split_guide(guide_id)
    if checkpoint is None:
        return folder.run_dir(run_id)
    path = folder.file(run_id, "checkpoints", check_name(checkpoint, "checkpoint name"))
    if not path.is_file():
        raise UnsafePath(f"run {run_id!r} has no checkpoint {checkpoint!r}")
    return path


def guided_denoiser(run, spec: GuidanceSpec, loaders: Loaders | None = None):
    """The denoiser to sample with: the guidance builder's (diffguide.guidance.spec), as the CLI's."""
    return build_guided(run, spec, names=DASHBOARD_NAMES, loaders=loaders)


def exact_classifier(run):
    """The Bayes classifier of a run's ground-truth mixture, or None when the data has no exact density."""
    mixture = getattr(run.dataset, "mixture", None)
    if mixture is None or mixture.num_classes < 2:
        return None
    from diffguide.classifiers.points import ExactClassifier

    return ExactClassifier(mixture)


def classifier_choices(folder: RunsFolder, run_id: str, run) -> list[str]:
    """The classifiers classifier guidance can use for a run: EXACT_CLASSIFIER (a 2D run on an exact
    mixture) and the ids of catalog.classifier_candidates."""
    exact = [EXACT_CLASSIFIER] if exact_classifier(run) is not None else []
    return exact + catalog.classifier_candidates(folder, run_id)


# ---------------------------------------------------------------------------------------------
# conditions


def class_names(run) -> list[str]:
    """Names of the run's classes (empty for unconditional runs)."""
    if not run.num_classes:
        return []
    names = list(getattr(run.dataset, "class_names", []) or [])
    return names if len(names) == run.num_classes else [str(i) for i in range(run.num_classes)]


def attribute_spec(run):
    """The run's multi-attribute spec (CryptoPunks type + accessories), or None."""
    return getattr(run.dataset, "attributes", None) if run.num_classes else None


def class_condition(run, choice: str, n: int):
    """Condition for n samples from a class choice: a class name, ALL_CLASSES or NO_CLASS.

    Returns (cond, labels): labels [n] are the classes used for colouring and per-class metrics, or None.
    """
    names = class_names(run)
    if not names:
        return None, None
    if choice == NO_CLASS:
        return null_condition(torch.zeros(n, dtype=torch.long), run.num_classes), None
    if choice == ALL_CLASSES:
        mixture = getattr(run.dataset, "mixture", None)
        if mixture is not None and mixture.num_classes == run.num_classes:
            from diffguide.metrics.points import class_labels

            labels = class_labels(mixture, n)
        else:
            labels = torch.arange(n) % run.num_classes
        return labels, labels
    if choice not in names:
        raise ConfigError(f"unknown class {choice!r}; choices: {', '.join([ALL_CLASSES, NO_CLASS, *names])}")
    y = names.index(choice)
    labels = torch.full((n,), y, dtype=torch.long)
    return labels, labels


def attribute_condition(spec, n: int, type_name: str | None, accessories: list[str] | None):
    """(condition dict, warnings) for a type (None = any) and accessories (None or [] = any)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = spec.condition(n, type_name, list(accessories) if accessories else None)
    return cond, [str(w.message) for w in caught]


def random_combination(spec, seed: int | None = None) -> tuple[str, list[str]]:
    """A (type, accessories) pair that occurs in the training data: those of a random training example."""
    if spec.type_labels is None or len(spec.type_labels) == 0:
        raise ConfigError("this dataset does not record its examples' attributes; cannot pick a combination")
    rng = np.random.default_rng(seed)
    i = int(rng.integers(len(spec.type_labels)))
    kind = spec.types[int(spec.type_labels[i])]
    acc = [spec.accessories[j] for j in np.flatnonzero(spec.accessory_labels[i])]
    return kind, acc


# ---------------------------------------------------------------------------------------------
# sampling


def sample(
    run,
    denoiser,
    n: int,
    *,
    sampler: str,
    steps: int,
    seed: int,
    cond=None,
    on_progress: Callable[[float], None] | None = None,
    recorder: Callable | None = None,
    sampler_kwargs: dict | None = None,
    sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """n samples [n, *shape] (on the CPU, sampled on the run's device) with the run's sigma grid of
    `steps` steps, or with `sigmas` (a grid file's; `steps` is then not used); on_progress(fraction)
    after each sampler step."""
    if n < 1:
        raise ConfigError(f"number of samples must be >= 1, got {n}")
    if sigmas is None:
        if steps < 1:
            raise ConfigError(f"number of steps must be >= 1, got {steps}")
        s = run.config.sample
        sigmas = sigma_grid(s.grid, steps, run.process, s.sigma_min, s.sigma_max, s.rho)
    total_steps = len(sigmas) - 1
    batch = 8192 if run.dataset.kind == "points" else 64

    def callback(info):
        if recorder is not None:
            recorder(info)
        if on_progress is not None:
            b = info["x"].shape[0]
            done = info.get("start", 0) + b * (info["i"] + 1) / total_steps
            on_progress(min(1.0, done / n))

    device = model_device(run.denoiser)  # where the run was loaded (`dashboard --device`)
    if isinstance(cond, dict):  # attribute conditions: generate slices them, it does not move them
        cond = {key: value.to(device) for key, value in cond.items()}
    with torch.no_grad():
        return generate(
            denoiser,
            n,
            run.dataset.shape,
            sigmas=sigmas,
            sampler=sampler_for(denoiser, sampler),  # CFG++ brings its own step
            seed=seed,
            cond=cond,
            batch_size=batch,
            device=device,
            callback=callback,
            sampler_kwargs=sampler_kwargs,
        )  # on the CPU


def read_run_grid(run, path, sampler: str):
    """A grid file of the run (see diffguide.samplers.grid_file): refused (ConfigError) where it does
    not fit the run's noise range or its own sampler and NFE; returns (grid, warnings), the warnings
    saying what it was tuned for that differs from this use (sampler, checkpoint)."""
    s = run.config.sample
    grid = read_grid_file(path)
    check_grid_fits(
        grid,
        sigma_min=min(run.process.sigma_min, s.sigma_min or math.inf),
        sigma_max=max(run.process.sigma_max, s.sigma_max or 0.0),
        process=run.process.name,
    )
    digest = hashlib.sha256(Path(run.checkpoint).read_bytes()).hexdigest() if grid.checkpoint_sha256 else ""
    return grid, grid_file_warnings(grid, sampler=sampler, checkpoint_sha256=digest, run=str(run.path))


def is_2d(run) -> bool:
    return run.dataset.kind == "points" and tuple(run.dataset.shape) == (2,)


# ---------------------------------------------------------------------------------------------
# figures as PNG bytes


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


_DENSITY_CACHE: dict[tuple, np.ndarray] = {}


def density_background(mixture, lim: float, res: int = 160) -> np.ndarray:
    """exp(log-density) of the mixture on a res x res grid over [-lim, lim]^2, computed once per (mixture, lim)."""
    from diffguide.plots.points import density_image

    key = (id(mixture), round(lim, 6), res)
    if key not in _DENSITY_CACHE:
        if len(_DENSITY_CACHE) > 16:
            _DENSITY_CACHE.clear()
        _DENSITY_CACHE[key] = np.exp(density_image(mixture, lim, res=res))
    return _DENSITY_CACHE[key]


def scatter_png(points: torch.Tensor, run, title: str = "", labels=None, lim: float | None = None) -> bytes:
    """2D samples over the run's ground-truth density (when the data has one), coloured by class."""
    import matplotlib.pyplot as plt

    from diffguide.plots.points import scatter_2d

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    color = "C0" if labels is None else [f"C{int(c) % 10}" for c in np.asarray(labels)]
    lim = lim or plot_limit(run, points)
    mixture = getattr(run.dataset, "mixture", None)
    if mixture is not None:  # the same background as figures.scatter_2d draws, cached across plots
        ax.imshow(
            density_background(mixture, lim),
            extent=(-lim, lim, -lim, lim),
            origin="lower",
            cmap="Greys",
            alpha=0.6,
        )
    scatter_2d(ax, points, title, lim=lim, color=color, s=2.0)
    fig.tight_layout()
    return _png(fig)


def plot_limit(run, points=None) -> float:
    """Axis half-width for a run's 2D plots: the ground truth's extent, widened (up to 3x) to show
    99.5% of the points, so samples off the data are visible rather than clipped."""
    mixture = getattr(run.dataset, "mixture", None)
    truth = float(mixture.means.abs().max()) * 1.15 + 0.1 if mixture is not None else 0.0
    if points is None:
        return truth or 1.0
    pts = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    pts = pts[np.isfinite(pts).all(1)]
    spread = float(np.quantile(np.abs(pts), 0.995) * 1.1) if len(pts) else 1.0
    if not truth:
        return spread if spread > 0 else 1.0
    return max(truth, min(spread, 3 * truth))


def grid_png(x: torch.Tensor, nrow: int | None = None) -> bytes:
    """Images [N, C, H, W] in [-1, 1] tiled into one PNG."""
    from diffguide.plots.images import grid_image

    buf = io.BytesIO()
    grid_image(x, nrow).save(buf, format="PNG")
    return buf.getvalue()


class Progression:
    """Sampler callback keeping x and x0_hat of the first `keep` samples at every step (first batch)."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self.frames: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def __call__(self, info: dict) -> None:
        if info.get("start", 0) != 0:
            return
        k = self.keep
        self.frames.append((info["x"][:k].cpu(), info["denoised"][:k].cpu(), float(info["sigma"])))

    def png(self, rows: int = 6) -> tuple[bytes, list[float]]:
        """One PNG: for `rows` steps spread over the run, x_t / max(1, sigma) above x0_hat; and their sigmas."""
        if not self.frames:
            raise ConfigError("no sampler steps were recorded")
        pick = sorted({round(i) for i in np.linspace(0, len(self.frames) - 1, min(rows, len(self.frames)))})
        tiles, sigmas = [], []
        for i in pick:
            x, denoised, sigma = self.frames[i]
            tiles += [x / max(1.0, sigma), denoised]
            sigmas.append(sigma)
        k = self.frames[0][0].shape[0]
        return grid_png(torch.cat(tiles), nrow=k), sigmas


def npz_bytes(x: torch.Tensor, labels=None) -> bytes:
    """Samples (and labels) as the bytes of an .npz file, like `diffguide sample --out x.npz`."""
    buf = io.BytesIO()
    arrays = {"samples": x.numpy()}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    np.savez(buf, **arrays)
    return buf.getvalue()
