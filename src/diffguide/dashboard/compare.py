"""The Compare page's computations: the same seeds under several guidance settings, and weight sweeps.

2D runs on an exact mixture are scored by diffguide.metrics.points (precision: share of samples inside the
region holding 99% of the true mass; coverage: 1 - TV distance of the component occupancy). Image
runs are scored in the feature space of the dataset's classifier when RUNS/classifier-DATA exists.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from diffguide.dashboard.generation import DASHBOARD_NAMES, guided_denoiser, is_2d, sample
from diffguide.errors import ConfigError, lookup
from diffguide.guidance.spec import METHODS, GuidanceSpec, Loaders, check, sampler_for


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


# the methods the page preselects beside no guidance (the page's first column, always shown)
DEFAULT_METHODS = ("cfg", "auto")
NEEDS_GUIDE = "needs a guide run (a weaker run on the same data); choose one above"
NEEDS_CLASSIFIER = (
    "needs a classifier: the exact Bayes classifier of a 2D run's mixture, or a classifier folder "
    "(classifier.json) inside the run folder"
)


def method_name(spec: GuidanceSpec | str) -> str:
    """A method's name without its weight, e.g. 'CFG', 'autoguidance', 'autoguidance + CFG w=2' (the
    CFG weight of a method that has one, where set)."""
    spec = GuidanceSpec(spec) if isinstance(spec, str) else spec
    label = lookup("guidance kind", spec.kind, METHODS).label
    for weight in (" w={w:g}", " {w:g}") + ((" w={w_cfg:g}",) if spec.w_cfg is None else ()):
        label = label.replace(weight, "")
    w_cfg = spec.w if spec.w_cfg is None else spec.w_cfg
    return label.format(w=float(spec.w), w_cfg=float(w_cfg))


def why_unavailable(run, spec: GuidanceSpec, sampler: str | None = None) -> str | None:
    """None where `spec` applies to `run` (sampled with `sampler`), else the guidance builder's one-line
    reason. Nothing is loaded: methods with a guide run or a classifier are only checked, the others
    are built (ICG's classes, CFG++'s sampler)."""
    try:
        method = check(spec, run, DASHBOARD_NAMES)
        if not method.fields & {"guide", "classifier"}:
            denoiser = guided_denoiser(run, spec)
            if sampler is not None:
                sampler_for(denoiser, sampler)
    except ConfigError as e:
        return str(e)
    return None


def method_reasons(
    run, guide: Path | None, classifiers: Sequence[str] = (), sampler: str | None = None
) -> dict[str, str | None]:
    """Each method of the registry but none -> None where it applies to `run`, else why not.
    guide: the checked guide path (generation.guide_path) or None; classifiers: the classifier choices
    (generation.classifier_choices)."""
    out: dict[str, str | None] = {}
    for kind, method in METHODS.items():
        if kind == "none":
            continue
        if "guide" in method.fields and guide is None:
            out[kind] = f"{DASHBOARD_NAMES['kind']} {kind} {NEEDS_GUIDE}"
        elif "classifier" in method.fields and not classifiers:
            out[kind] = f"{DASHBOARD_NAMES['kind']} {kind} {NEEDS_CLASSIFIER}"
        else:
            spec = GuidanceSpec(kind, 2.0, guide=guide if "guide" in method.fields else None)
            out[kind] = why_unavailable(run, spec, sampler)
    return out


def comparison_choices(
    run, specs: Sequence[GuidanceSpec], sampler: str | None = None
) -> list[GuidanceSpec | str]:
    """No guidance first, then each spec of `specs` (no guidance among them is dropped: it is first
    already), or instead of it a string saying why it does not apply (why_unavailable)."""
    out: list[GuidanceSpec | str] = [GuidanceSpec("none")]
    for spec in specs:
        if spec.kind == "none":
            continue
        reason = why_unavailable(run, spec, sampler)
        out.append(spec if reason is None else f"{method_name(spec)}: {reason}")
    return out


def side_by_side(
    run,
    specs: Sequence[GuidanceSpec],
    *,
    n: int,
    seed: int,
    sampler: str,
    steps: int,
    cond=None,
    score: Callable[[torch.Tensor], dict] | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    loaders: Loaders | None = None,
) -> list[dict]:
    """One panel per comparison_choices entry, all from the same seeds and condition: {"title", "spec",
    "x" (the samples), "metrics" (score(x), or {})}, or {"title": "unavailable", "note": reason}."""
    choices = comparison_choices(run, specs, sampler)
    panels = []
    for i, choice in enumerate(choices):
        if isinstance(choice, str):
            panels.append({"title": "unavailable", "note": choice})
            continue
        denoiser = guided_denoiser(run, choice, loaders)
        x = sample(run, denoiser, n, sampler=sampler, steps=steps, seed=seed, cond=cond)
        panels.append(
            {"title": choice.describe(), "spec": choice, "x": x, "metrics": score(x) if score else {}}
        )
        if on_progress is not None:
            on_progress((i + 1) / len(choices), choice.describe())
    return panels


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
    specs: Sequence[GuidanceSpec],
    weights: list[float],
    *,
    n: int,
    seed: int,
    sampler: str,
    steps: int,
    cond=None,
    labels=None,
    scorer: Scorer | None = None,
    on_progress: Callable[[float], None] | None = None,
    loaders: Loaders | None = None,
) -> list[dict]:
    """Rows {guidance (method_name), w, metric...}: each spec of `specs` that applies (comparison_choices;
    no guidance is not swept) at each weight, its other settings kept, all from the same seeds."""
    scorer = scorer or Scorer(run)
    if not scorer.keys:
        raise ConfigError(
            "no metric is available for this run: 2D runs are scored exactly; image runs need the dataset's "
            "feature classifier in the runs folder: diffguide train-classifier --data NAME --out RUNS/classifier-NAME"
        )
    available = [c for c in comparison_choices(run, specs, sampler)[1:] if isinstance(c, GuidanceSpec)]
    if not available:
        raise ConfigError(
            "nothing to sweep: choose at least one guidance method that applies to this run (CFG needs a "
            "class-conditional run, autoguidance a guide run on the same data)"
        )
    rows, total = [], len(available) * len(weights)
    for spec in available:
        for w in weights:
            denoiser = guided_denoiser(run, dataclasses.replace(spec, w=w), loaders)
            x = sample(run, denoiser, n, sampler=sampler, steps=steps, seed=seed, cond=cond)
            rows.append({"guidance": method_name(spec), "w": w, **scorer(x, labels, cond)})
            if on_progress is not None:
                on_progress(len(rows) / total)
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


__all__ = [
    "DEFAULT_METHODS",
    "Scorer",
    "comparison_choices",
    "is_2d",
    "method_name",
    "method_reasons",
    "parse_weights",
    "side_by_side",
    "sweep_png",
    "weight_sweep",
    "why_unavailable",
]
