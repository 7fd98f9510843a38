"""The Compare page's computations: the same seeds under several guidance settings, and weight sweeps.

2D runs on an exact mixture are scored by diffguide.metrics.points (precision: share of samples inside the
region holding 99% of the true mass; coverage: 1 - TV distance of the component occupancy). Image
runs are scored in the feature space of the dataset's classifier when RUNS/classifier-DATA exists.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffguide.dashboard.generation import DASHBOARD_NAMES, guided_denoiser, is_2d, sample
from diffguide.errors import ConfigError
from diffguide.guidance.spec import GuidanceSpec, Loaders, check


def parse_weights(text: str) -> list[float]:
    """'1, 1.5, 2' -> [1.0, 1.5, 2.0]; each must be a number >= 0; at most 12."""
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            w = float(part)
        except ValueError:
            raise ConfigError(f"weight {part!r} is not a number; write weights like 1, 1.5, 2, 3") from None
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"weights must be finite and >= 0 (1 = no guidance), got {part!r}")
        out.append(w)
    if not out:
        raise ConfigError("give at least one weight, e.g. 1, 1.5, 2, 3")
    if len(out) > 12:
        raise ConfigError(f"at most 12 weights per sweep, got {len(out)}")
    return out


def comparison_choices(
    run, guide: Path | None, w_cfg: float, w_auto: float, interval=None
) -> list[GuidanceSpec | str]:
    """No guidance, CFG and autoguidance (guide: a checked guide path, generation.guide_path); a string
    instead of a spec says why one is unavailable (the guidance builder's own message for CFG)."""
    out: list[GuidanceSpec | str] = [GuidanceSpec("none")]
    cfg = GuidanceSpec("cfg", w_cfg, interval=interval)
    try:
        check(cfg, run, DASHBOARD_NAMES)
        out.append(cfg)
    except ConfigError as e:
        out.append(str(e))
    out.append(
        GuidanceSpec("auto", w_auto, interval=interval, guide=guide)
        if guide is not None
        else "autoguidance needs a guide run (a weaker run on the same data)"
    )
    return out


class Scorer:
    """Scores a set of samples: exact 2D metrics, a sliced W2 to the data, or image metrics.

    Image runs are scored in the feature space of the dataset's small classifier (RUNS/classifier-DATA,
    written by `diffguide train-classifier`), with diffguide.metrics.images: conditional accuracy and
    the classifier-feature FID against held-out images (not comparable with Inception FIDs).
    """

    def __init__(self, run, n_reference: int = 10_000, image_classifier: Path | None = None):
        self.run = run
        self.kind = "none"
        mixture = getattr(run.dataset, "mixture", None)
        if mixture is not None:
            from diffguide.metrics.points import MixtureMetrics

            self.metrics = MixtureMetrics(mixture, n_reference=n_reference)
            self.kind = "mixture"
        elif run.dataset.kind == "points" and hasattr(run.dataset, "points"):
            self.reference = run.dataset.points[:n_reference]
            self.kind = "points"
        elif image_classifier is not None:
            from diffguide.classifiers.images import load_classifier

            self.classifier, meta = load_classifier(image_classifier)
            trained_on = meta.get("data", {}).get("name")
            if trained_on != run.config.data.name:
                raise ConfigError(
                    f"classifier {str(image_classifier)!r} was trained on {trained_on!r}, the run on "
                    f"{run.config.data.name!r}"
                )
            real, _ = run.dataset.heldout(min(n_reference, 2000))
            self.real_features = self.classifier.predict(real)[0].numpy()
            self.tag = run.config.data.name.replace("-", "_") + "_clf"
            self.kind = "images"

    @property
    def keys(self) -> list[str]:
        if self.kind == "images":
            accuracy = "type_accuracy" if getattr(self.run.dataset, "attributes", None) else "accuracy"
            return [accuracy, f"fid_{self.tag}"]
        return {"mixture": ["precision", "coverage"], "points": ["sliced_w2"], "none": []}[self.kind]

    def __call__(self, x: torch.Tensor, labels=None, cond=None) -> dict[str, float]:
        if self.kind == "mixture":
            result = self.metrics.evaluate(x, labels)
            names = self.run.dataset.class_names
            single = labels is not None and len(torch.unique(torch.as_tensor(labels))) == 1
            if single and result.get("per_class"):
                y = int(torch.as_tensor(labels)[0])
                result = result["per_class"].get(names[y] if y < len(names) else str(y), result)
            return {k: float(result[k]) for k in ("precision", "coverage", "sliced_w2")}
        if self.kind == "points":
            from diffguide.metrics.points import sliced_w2

            return {"sliced_w2": sliced_w2(x, self.reference)}
        if self.kind == "images":
            from diffguide.metrics.images import conditional_accuracy, feature_metrics

            features, pred = self.classifier.predict(x)
            out = feature_metrics(self.real_features, features.numpy(), self.tag)
            attrs = getattr(self.run.dataset, "attributes", None)
            out.update(conditional_accuracy(pred, cond, attrs.accessories if attrs else None))
            return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}
        return {}


def weight_sweep(
    run,
    guide,
    weights: list[float],
    *,
    n: int,
    seed: int,
    sampler: str,
    steps: int,
    cond=None,
    labels=None,
    interval=None,
    scorer: Scorer | None = None,
    on_progress: Callable[[float], None] | None = None,
    loaders: Loaders | None = None,
) -> list[dict]:
    """Rows {guidance, w, metric...} for CFG and autoguidance (those available) at each weight, same seeds;
    guide: the checked guide path (generation.guide_path) or None."""
    scorer = scorer or Scorer(run)
    if not scorer.keys:
        raise ConfigError(
            "no metric is available for this run: 2D runs are scored exactly; image runs need the dataset's "
            "feature classifier in the runs folder: diffguide train-classifier --data NAME --out RUNS/classifier-NAME"
        )
    # the methods the builder's rules allow here (the same as the side-by-side panels)
    available = comparison_choices(run, guide, 1.0, 1.0, interval)[1:]
    kinds = [spec.kind for spec in available if isinstance(spec, GuidanceSpec)]
    if not kinds:
        raise ConfigError(
            "nothing to sweep: CFG needs a class-conditional run and autoguidance a guide run on the same data"
        )
    rows, total, done = [], len(kinds) * len(weights), 0
    for kind in kinds:
        for w in weights:
            spec = GuidanceSpec(kind, w, interval=interval, guide=guide if kind == "auto" else None)
            denoiser = guided_denoiser(run, spec, loaders)
            x = sample(run, denoiser, n, sampler=sampler, steps=steps, seed=seed, cond=cond)
            rows.append(
                {"guidance": "CFG" if kind == "cfg" else "autoguidance", "w": w, **scorer(x, labels, cond)}
            )
            done += 1
            if on_progress is not None:
                on_progress(done / total)
    return rows


def sweep_png(rows: list[dict], keys: list[str], title: str = "") -> bytes:
    """Precision against coverage (2D, each point labelled by w), else each metric against w."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["guidance"], []).append(r)
    if keys[:2] == ["precision", "coverage"]:
        fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        for i, (name, rs) in enumerate(groups.items()):
            rs = sorted(rs, key=lambda r: r["w"])
            ax.plot(
                [r["coverage"] for r in rs], [r["precision"] for r in rs], "o-", color=f"C{i}", label=name
            )
            for r in rs:
                ax.annotate(
                    f"w={r['w']:g}",
                    (r["coverage"], r["precision"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xlabel("coverage (variety, ideal 1)")
        ax.set_ylabel("precision (quality, ideal 0.99)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3), dpi=100)
        for ax, key in zip(np.atleast_1d(axes), keys):
            for i, (name, rs) in enumerate(groups.items()):
                rs = sorted(rs, key=lambda r: r["w"])
                ax.plot(
                    [r["w"] for r in rs], [r.get(key, math.nan) for r in rs], "o-", color=f"C{i}", label=name
                )
            ax.set_xlabel("w")
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


__all__ = ["Scorer", "comparison_choices", "is_2d", "parse_weights", "sweep_png", "weight_sweep"]
