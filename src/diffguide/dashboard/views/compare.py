"""Compare page: the same seeds with no guidance, CFG and autoguidance side by side; weight sweeps."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from diffguide.dashboard import catalog, compare, generation, ui
from diffguide.dashboard.generation import ALL_CLASSES, NO_CLASS


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
    guide = None if guide_id == "(none)" else generation.guide_path(folder, guide_id)
    two_d = generation.is_2d(run)
    a, b = st.columns(2)
    w_cfg = a.slider("CFG weight w", 0.0, 10.0, 2.0, 0.1, key="cmp-wcfg", disabled=not run.num_classes)
    w_auto = b.slider("Autoguidance weight w", 0.0, 10.0, 2.0, 0.1, key="cmp-wauto", disabled=guide is None)
    c, d = st.columns(2)
    seed = c.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, key="cmp-seed")
    n = d.number_input(
        "Samples", min_value=1, max_value=20_000 if two_d else 64, value=2000 if two_d else 16, key="cmp-n"
    )
    sampler, steps = ui.sampler_inputs(run.config.sample, "cmp", run_id)
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
    return {
        "run_id": run_id,
        "run": run,
        "guide": guide,
        "w_cfg": float(w_cfg),
        "w_auto": float(w_auto),
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


def side_by_side(p: dict) -> list[dict]:
    run = p["run"]
    choices = compare.comparison_choices(run, p["guide"], p["w_cfg"], p["w_auto"])
    scorer = scorer_for(p["folder"], run)
    panels, samples = [], []
    bar = st.progress(0.0, text="sampling ...")
    for i, choice in enumerate(choices):
        if isinstance(choice, str):
            panels.append({"title": "unavailable", "note": choice})
            continue
        x = generation.sample(
            run,
            generation.guided_denoiser(run, choice, ui.guide_loaders()),
            p["n"],
            sampler=p["sampler"],
            steps=p["steps"],
            seed=p["seed"],
            cond=p["cond"],
        )
        bar.progress((i + 1) / len(choices), text=f"sampling ... {choice.describe()}")
        panel = {"title": choice.describe()}
        if scorer is not None and scorer.keys:
            m = scorer(x, p["labels"], None if p["cond_text"] == NO_CLASS else p["cond"])
            panel["note"] = " · ".join(f"{k} {m[k]:.3f}" for k in scorer.keys if k in m)
        panels.append(panel)
        samples.append((panel, x))
    if p["two_d"]:  # one axis range for all panels, so they compare at a glance
        lim = generation.plot_limit(run, torch.cat([x for _, x in samples]))
        for panel, x in samples:
            panel["png"] = generation.scatter_png(x, run, labels=p["labels"], lim=lim)
    else:
        for panel, x in samples:
            panel["png"] = generation.grid_png(x)
    bar.empty()
    return panels


def sweep(p: dict, weights: list[float]) -> dict:
    run = p["run"]
    scorer = scorer_for(p["folder"], run)
    bar = st.progress(0.0, text="sweeping ...")
    rows = compare.weight_sweep(
        run,
        p["guide"],
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
        "The same seeds (the same starting noise) under no guidance, classifier-free guidance and "
        "autoguidance. w = 1 is no guidance."
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
