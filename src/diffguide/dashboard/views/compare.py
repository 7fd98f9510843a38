"""Compare page: the same seeds with no guidance and the chosen guidance methods side by side; weight sweeps."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from diffguide.dashboard import catalog, compare, generation, ui
from diffguide.dashboard.generation import ALL_CLASSES, NO_CLASS
from diffguide.guidance.spec import METHODS


@st.cache_resource(max_entries=4, show_spinner="Preparing the metrics (reference samples) ...")
def _scorer(run_dir: str, stamp: float, classifier: str | None, _run):
    return compare.Scorer(_run, image_classifier=None if classifier is None else Path(classifier))


def scorer_for(folder, run):
    """Metrics set-up (reference draws, thresholds, classifier features) once per run and checkpoint."""
    clf = catalog.image_classifier_dir(folder, run.config.data.name) if run.dataset.kind == "images" else None
    return _scorer(str(run.path), run.checkpoint.stat().st_mtime, None if clf is None else str(clf), run)


def settings_panel(folder) -> dict | None:
    run_id = ui.run_picker(folder)
    if run_id is None:
        return None
    run = ui.load_run(folder, run_id)
    guides = catalog.guide_candidates(folder, run_id)
    guide_id = st.selectbox(
        "Guide run for autoguidance",
        [*guides, "(none)"],
        key="cmp-guide",
        help="a weaker run on the same data: fewer training steps and/or a smaller width; run@ckpt-N is "
        "this run's own earlier checkpoint",
    )
    guide_id = None if guide_id == "(none)" else guide_id
    two_d = generation.is_2d(run)
    sampler, steps = ui.sampler_inputs(run.config.sample, "cmp", run_id)
    c, d = st.columns(2)
    seed = c.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, key="cmp-seed")
    n = d.number_input(
        "Samples", min_value=1, max_value=20_000 if two_d else 64, value=2000 if two_d else 16, key="cmp-n"
    )
    names = generation.class_names(run)
    cond, labels, cond_text = None, None, ""
    if names and generation.attribute_spec(run) is None:
        options = [ALL_CLASSES, *names, NO_CLASS]
        cond_text = st.selectbox("Class", options, key="cmp-class")
        cond, labels = generation.class_condition(run, cond_text, int(n))
    elif generation.attribute_spec(run) is not None:
        cond = generation.attribute_condition(generation.attribute_spec(run), int(n), None, None)[0]
        st.caption(
            "Attribute runs are compared with an empty condition; pick attributes on the Generate page."
        )
    guide = None if guide_id is None else generation.guide_path(folder, guide_id)
    classifiers = generation.classifier_choices(folder, run_id, run)
    kinds = pick_methods(compare.method_reasons(run, guide, classifiers, sampler))
    specs = [
        generation.guidance_spec(folder, kind, guide_id=guide_id, **settings)
        for kind, settings in method_settings(kinds, classifiers).items()
    ]
    return {
        "run_id": run_id,
        "run": run,
        "specs": specs,
        "seed": int(seed),
        "n": int(n),
        "sampler": sampler,
        "steps": int(steps),
        "cond": cond,
        "labels": labels,
        "cond_text": cond_text,
        "two_d": two_d,
        "folder": folder,
    }


def pick_methods(reasons: dict[str, str | None]) -> list[str]:
    """A multiselect of the methods that apply (reasons[kind] is None), CFG and autoguidance preselected;
    the others listed with why they do not apply."""
    available = [kind for kind, reason in reasons.items() if reason is None]
    key = "cmp-methods"  # the state is set here, not by `default`: the options change with run and guide
    if key in st.session_state:
        st.session_state[key] = [kind for kind in st.session_state[key] if kind in available]
    else:
        st.session_state[key] = [kind for kind in compare.DEFAULT_METHODS if kind in available]
    kinds = st.multiselect(
        "Guidance methods (beside no guidance, always the first column)",
        available,
        format_func=generation.GUIDANCE_KINDS.get,
        key=key,
    )
    unavailable = {kind: reason for kind, reason in reasons.items() if reason is not None}
    if unavailable:
        with st.expander(f"Methods that do not apply here ({len(unavailable)})"):
            st.markdown(
                "\n".join(f"- **{generation.GUIDANCE_KINDS[k]}**: {r}" for k, r in unavailable.items())
            )
    return kinds


def method_settings(kinds: list[str], classifiers: list[str]) -> dict[str, dict]:
    """Each chosen method's weight and own settings (generation.guidance_spec's keyword arguments)."""
    out = {}
    for i, kind in enumerate(kinds):
        if i % 3 == 0:
            columns = st.columns(3)
        fields, name = METHODS[kind].fields, compare.method_name(kind)
        with columns[i % 3]:
            settings: dict = {}
            if "classifier" in fields:
                settings["classifier_id"] = st.selectbox("Classifier", classifiers, key="cmp-classifier")
                settings["w"] = st.slider("Classifier scale", 0.0, 10.0, 1.0, 0.1, key=f"cmp-w-{kind}")
            elif kind == "cfg+auto":  # both weights, each named
                settings["w"] = st.slider(f"{name}: autoguidance w", 0.0, 10.0, 2.0, 0.1, key=f"cmp-w-{kind}")
                settings["w_cfg"] = st.slider(f"{name}: CFG w", 0.0, 10.0, 2.0, 0.1, key=f"cmp-w-cfg-{kind}")
            else:
                settings["w"] = st.slider(f"{name} weight w", 0.0, 10.0, 2.0, 0.1, key=f"cmp-w-{kind}")
            defaults = METHODS[kind].options  # only the changed options: the panel titles stay short
            options = ui.method_option_inputs(kind, "cmp")
            settings["options"] = {k: v for k, v in options.items() if v != defaults[k]}
            out[kind] = {k: float(v) if k.startswith("w") else v for k, v in settings.items()}
    return out


def side_by_side(p: dict) -> list[dict]:
    run = p["run"]
    scorer = scorer_for(p["folder"], run)
    metric_cond = None if p["cond_text"] == NO_CLASS else p["cond"]

    def score(x):
        return scorer(x, p["labels"], metric_cond) if scorer is not None and scorer.keys else {}

    bar = st.progress(0.0, text="sampling ...")
    panels = compare.side_by_side(
        run,
        p["specs"],
        n=p["n"],
        seed=p["seed"],
        sampler=p["sampler"],
        steps=p["steps"],
        cond=p["cond"],
        score=score,
        on_progress=lambda f, what: bar.progress(f, text=f"sampling ... {what}"),
        loaders=ui.guide_loaders(),
    )
    sampled = [panel for panel in panels if "x" in panel]
    if p["two_d"]:  # one axis range for all panels, so they compare at a glance
        lim = generation.plot_limit(run, torch.cat([panel["x"] for panel in sampled]))
    for panel in sampled:
        x, m = panel.pop("x"), panel.pop("metrics")
        panel.pop("spec")
        if m:
            panel["note"] = " · ".join(f"{k} {m[k]:.3f}" for k in scorer.keys if k in m)
        panel["png"] = (
            generation.scatter_png(x, run, labels=p["labels"], lim=lim)
            if p["two_d"]
            else generation.grid_png(x)
        )
    bar.empty()
    return panels


def sweep(p: dict, weights: list[float]) -> dict:
    run = p["run"]
    scorer = scorer_for(p["folder"], run)
    bar = st.progress(0.0, text="sweeping ...")
    rows = compare.weight_sweep(
        run,
        p["specs"],
        weights,
        n=p["n"],
        seed=p["seed"],
        sampler=p["sampler"],
        steps=p["steps"],
        cond=p["cond"],
        labels=p["labels"],
        scorer=scorer,
        on_progress=lambda f: bar.progress(f, text=f"sweeping ... {f:.0%}"),
        loaders=ui.guide_loaders(),
    )
    bar.empty()
    title = f"{p['run_id']}" + (f", {p['cond_text']}" if p["cond_text"] else "")
    return {"rows": rows, "png": compare.sweep_png(rows, scorer.keys, title)}


def main() -> None:
    folder = ui.runs_folder()
    st.title("Compare guidance")
    st.caption(
        "The same seeds (the same starting noise) under no guidance and each guidance method chosen "
        "below (classifier-free guidance and autoguidance to begin with). w = 1 is no guidance."
    )
    settings = None
    with ui.readable_errors():
        settings = settings_panel(folder)
    if settings is None:
        return
    if st.button("Compare", type="primary", key="cmp-go"):
        st.session_state.pop("cmp-result", None)
        with ui.readable_errors("cannot compare"):
            st.session_state["cmp-result"] = side_by_side(settings)
    panels = st.session_state.get("cmp-result")
    if panels:
        for col, panel in zip(st.columns(len(panels)), panels):
            with col:
                st.markdown(f"**{panel['title']}**")
                if "png" in panel:
                    st.image(panel["png"], width="stretch")
                if panel.get("note"):
                    st.caption(panel["note"])
    st.subheader("Weight sweep")
    st.caption(
        "2D runs on an exact mixture: precision (share of samples inside the region holding 99% of the true "
        "mass) against coverage (1 - TV distance of the mixture-component occupancy), one point per w."
    )
    weights_text = st.text_input("Weights", "1, 1.5, 2, 3, 4", key="cmp-weights")
    if st.button("Run sweep", key="cmp-sweep"):
        st.session_state.pop("cmp-sweep-result", None)
        with ui.readable_errors("cannot sweep"):
            weights = compare.parse_weights(weights_text)
            st.session_state["cmp-sweep-result"] = sweep(settings, weights)
    result = st.session_state.get("cmp-sweep-result")
    if result:
        st.image(result["png"], width=560)
        st.dataframe(result["rows"], hide_index=True)


main()
