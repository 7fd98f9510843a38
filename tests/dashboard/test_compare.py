"""The Compare page's computations (diffguide.dashboard.compare), without Streamlit, on the tiny 2D runs of
conftest.py: `tiny` (a class-conditional MLP, no self-attention), its guide `tiny-amateur` and the
unconditional `tiny-uncond`.

Each chosen method's samples are those of the library's path, the one the command line takes
(`build_guided` and `generate` from the same seed and condition), and are scored by the exact metrics of
the run's mixture (diffguide.metrics.points); a method that does not apply is listed with the builder's
reason, never sampled.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffguide.dashboard import compare
from diffguide.errors import ConfigError
from diffguide.guidance.spec import EXACT, METHODS, GuidanceSpec, build_guided, sampler_for
from diffguide.metrics.points import MixtureMetrics, class_labels
from diffguide.models.runs import load_run
from diffguide.samplers.generation import generate, sigma_grid

N, STEPS = 300, 4


@pytest.fixture(scope="module")
def runs(dashboard_source_runs):
    return {name: load_run(dashboard_source_runs / name) for name in ("tiny", "tiny-amateur", "tiny-uncond")}


def library_samples(run, spec: GuidanceSpec, sampler: str, cond) -> torch.Tensor:
    """The command line's path: the builder's denoiser, the run's grid, the same seed."""
    s = run.config.sample
    sigmas = sigma_grid(s.grid, STEPS, run.process, s.sigma_min, s.sigma_max, s.rho)
    denoiser = build_guided(run, spec)
    return generate(denoiser, N, run.dataset.shape, sigmas=sigmas, sampler=sampler_for(denoiser, sampler),
                    seed=3, cond=cond)  # fmt: skip


def test_each_chosen_method_samples_as_the_library_does(runs):
    run = runs["tiny"]
    guide = runs["tiny-amateur"].path
    labels = class_labels(run.dataset.mixture, N)
    specs = [
        GuidanceSpec("cfg", 2.5),
        GuidanceSpec("auto", 2.0, guide=guide),
        GuidanceSpec("cfg+auto", 1.5, w_cfg=2.0, guide=guide),
        GuidanceSpec("apg", 3.0, options={"eta": 0.5}),
        GuidanceSpec("icg", 2.0),
        GuidanceSpec("cfg++", 1.5),
        GuidanceSpec("slg", 2.0),
        GuidanceSpec("classifier", 1.0, classifier=EXACT),
        GuidanceSpec("pag", 2.0),  # tiny's MLP has no self-attention: refused with the builder's reason
    ]
    metrics = MixtureMetrics(run.dataset.mixture, n_reference=10_000)
    panels = compare.side_by_side(
        run, specs, n=N, seed=3, sampler="euler", steps=STEPS, cond=labels,
        score=lambda x: metrics.evaluate(x, labels),
    )  # fmt: skip
    assert [p["title"] for p in panels] == ["no guidance", *(s.describe() for s in specs[:-1]), "unavailable"]
    assert panels[-1]["note"].startswith("PAG: ") and "self-attention" in panels[-1]["note"]
    for panel, spec in zip(panels, [GuidanceSpec("none"), *specs[:-1]]):
        expected = library_samples(run, spec, "euler", labels)
        assert torch.equal(panel["x"], expected), spec.kind
        truth = metrics.evaluate(expected, labels)
        assert (panel["metrics"]["precision"], panel["metrics"]["coverage"]) == (
            truth["precision"],
            truth["coverage"],
        )
    # and the first two are the textbook combinators (diffguide.guidance), not only the builder's
    from diffguide import guidance

    cfg = guidance.classifier_free_guidance(run.denoiser, 2.5, run.num_classes)
    auto = guidance.autoguidance(run.denoiser, runs["tiny-amateur"].denoiser, 2.0)
    s = run.config.sample
    sigmas = sigma_grid(s.grid, STEPS, run.process, s.sigma_min, s.sigma_max, s.rho)
    for panel, denoiser in zip(panels[1:3], (cfg, auto)):
        x = generate(denoiser, N, (2,), sigmas=sigmas, sampler="euler", seed=3, cond=labels)
        assert torch.allclose(panel["x"], x, atol=1e-5)


def test_methods_that_do_not_apply_say_why(runs):
    tiny, uncond = runs["tiny"], runs["tiny-uncond"]
    reasons = compare.method_reasons(tiny, None, [], sampler="heun")
    assert set(reasons) == set(METHODS) - {"none"}
    for kind in ("cfg", "apg", "cfg-zero*", "tcfg", "mambo-g", "icg", "slg", "dropout", "tsg"):
        assert reasons[kind] is None, (kind, reasons[kind])
    assert reasons["auto"] == f"guidance auto {compare.NEEDS_GUIDE}"
    assert reasons["cfg+auto"] == f"guidance cfg+auto {compare.NEEDS_GUIDE}"
    assert reasons["classifier"] == f"guidance classifier {compare.NEEDS_CLASSIFIER}"
    assert "self-attention" in reasons["pag"] and "self-attention" in reasons["seg"]
    assert "not images" in reasons["fdg"]  # frequency bands need an image run
    assert "CFG++ is defined for" in reasons["cfg++"] and "'heun'" in reasons["cfg++"]
    # with a guide, a classifier and a sampler CFG++ is defined for, those apply too
    reasons = compare.method_reasons(tiny, runs["tiny-amateur"].path, ["exact"], sampler="euler")
    assert [k for k, r in reasons.items() if r is not None] == ["fdg", "pag", "seg"]
    # an unconditional run: nothing that guides by the null class, nor ICG (no classes to draw from)
    reasons = compare.method_reasons(uncond, runs["tiny-amateur"].path, ["exact"], sampler="euler")
    null_guided = [k for k, m in METHODS.items() if m.null_guide]
    for kind in null_guided:
        if kind == "fdg":  # a 2D run: the image requirement is named first
            assert "not images" in reasons[kind]
            continue
        assert "class-conditional run" in reasons[kind] and "'tiny-uncond'" in reasons[kind], kind
    assert ">= 2 classes" in reasons["icg"]
    assert reasons["auto"] is None and reasons["slg"] is None and reasons["dropout"] is None
    assert all("\n" not in r for r in reasons.values() if r is not None)
    # chosen anyway, such a method becomes the reason in its place, not a sample
    choices = compare.comparison_choices(uncond, [GuidanceSpec("none"), GuidanceSpec("cfg", 2.0)])
    assert choices[0] == GuidanceSpec("none") and len(choices) == 2
    assert choices[1].startswith("CFG: guidance cfg needs a class-conditional run")


def test_weight_sweep_over_the_chosen_methods(runs):
    run = runs["tiny"]
    labels = class_labels(run.dataset.mixture, N)
    specs = [GuidanceSpec("none"), GuidanceSpec("apg", 2.0, options={"eta": 0.5}), GuidanceSpec("slg", 2.0),
             GuidanceSpec("pag", 2.0)]  # fmt: skip
    scorer = compare.Scorer(run)
    rows = compare.weight_sweep(
        run, specs, [1.0, 3.0], n=N, seed=3, sampler="euler", steps=STEPS, cond=labels, labels=labels,
        scorer=scorer,
    )  # fmt: skip
    # no guidance is the panel beside the sweep, PAG does not apply: APG and SLG at each weight
    assert [(r["guidance"], r["w"]) for r in rows] == [("APG", 1.0), ("APG", 3.0), ("SLG", 1.0), ("SLG", 3.0)]
    metrics = MixtureMetrics(run.dataset.mixture, n_reference=10_000)
    for row, spec in zip(rows, [specs[1], specs[1], specs[2], specs[2]]):
        # the method's other settings (APG's eta) are kept, only w changes
        x = library_samples(run, dataclasses.replace(spec, w=row["w"]), "euler", labels)
        truth = metrics.evaluate(x, labels)
        assert (row["precision"], row["coverage"]) == (truth["precision"], truth["coverage"])
    with pytest.raises(ConfigError, match="nothing to sweep"):
        compare.weight_sweep(run, specs[3:], [2.0], n=N, seed=3, sampler="euler", steps=STEPS, scorer=scorer)


def test_method_names_drop_the_weight():
    assert compare.method_name("cfg") == "CFG" and compare.method_name("auto") == "autoguidance"
    assert compare.method_name(GuidanceSpec("cfg+auto", 2.0, w_cfg=3.0)) == "autoguidance + CFG w=3"
    assert compare.method_name("classifier") == "classifier scale"
    assert compare.method_name("cfg+auto") == "autoguidance + CFG"
    for kind, method in METHODS.items():  # every method's name is its label without the weight
        spec = GuidanceSpec(kind, 2.5, w_cfg=3.0 if "{w_cfg" in method.label else None)
        assert compare.method_name(spec) == spec.describe().replace(" w=2.5", "").replace(" 2.5", "")
