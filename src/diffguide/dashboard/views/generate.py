"""Generate page: run and checkpoint, sampler, guidance, condition; 2D scatter over the truth or image grid."""

from __future__ import annotations

import streamlit as st

from diffguide.dashboard import catalog, generation, ui
from diffguide.dashboard.generation import ALL_CLASSES, NO_CLASS
from diffguide.guidance.spec import METHODS


def pick_guidance(folder, run_id: str, run, prefix: str = "gen") -> dict:
    """Widgets for the guidance kind and the settings its method reads (the builder's registry says
    which); returns the keyword arguments of generation.guidance_spec."""
    kinds = list(generation.GUIDANCE_KINDS)
    kind = st.selectbox(
        "Guidance",
        kinds,
        index=ui.query_choice("guidance", kinds, "none"),
        format_func=generation.GUIDANCE_KINDS.get,
        key=f"{prefix}-guidance",
    )
    fields = METHODS[kind].fields
    choice = {"kind": kind}
    if kind == "none":
        return choice
    if "classifier" in fields:
        choice["classifier_id"] = _pick_classifier(folder, run_id, run, prefix)
        choice["w"] = st.slider("Classifier scale", 0.0, 10.0, 1.0, 0.1, key=f"{prefix}-scale")
    else:
        label = "Autoguidance weight w" if "w_cfg" in fields else "Guidance weight w"
        choice["w"] = st.slider(
            f"{label} (1 = no guidance)",
            0.0,
            10.0,
            2.0,
            0.1,
            key=f"{prefix}-w",
            help="D = guide + w (main - guide). Ho & Salimans' w' is w - 1; diffusers' guidance_scale is w.",
        )
    if "w_cfg" in fields:
        choice["w_cfg"] = st.slider("CFG weight w (1 = no CFG)", 0.0, 10.0, 2.0, 0.1, key=f"{prefix}-w-cfg")
    if "guide" in fields:
        choice["guide_id"] = _pick_guide(folder, run_id, prefix)
    if "rescale" in fields:
        choice["rescale"] = st.slider(
            "Guidance rescale phi (0 = off)",
            0.0,
            1.0,
            0.0,
            0.05,
            key=f"{prefix}-rescale",
            help="Lin et al. 2024: pull the guided prediction's std back towards the main model's",
        )
    if "interval" in fields:
        choice["interval"] = _pick_interval(prefix)
    if "schedule" in fields:
        choice["schedule"] = _pick_schedule(prefix)
    if METHODS[kind].options:
        choice["options"] = ui.method_option_inputs(kind, prefix)
    return choice


def _pick_schedule(prefix: str) -> tuple[str, float, float] | None:
    """A weight schedule w(sigma) over [lo, hi], or None (constant w)."""
    kind = st.selectbox(
        "Weight schedule w(sigma)", ["constant", "step", "linear", "cosine"], key=f"{prefix}-schedule",
        help="1 + (w - 1) m(sigma): step = the interval; linear/cosine grow from sigma_hi down to sigma_lo",
    )  # fmt: skip
    if kind == "constant":
        return None
    lo = st.number_input("schedule sigma_lo", 0.001, 1000.0, 0.05, key=f"{prefix}-schedule-lo")
    hi = st.number_input("schedule sigma_hi", 0.001, 1000.0, 5.0, key=f"{prefix}-schedule-hi")
    return kind, float(lo), float(hi)


def _pick_classifier(folder, run_id: str, run, prefix: str) -> str | None:
    options = generation.classifier_choices(folder, run_id, run)
    if not options:
        st.warning(
            "No classifier for this run: classifier guidance needs a 2D run on an exact mixture (Bayes "
            "classifier) or a classifier folder (classifier.json) inside the run folder."
        )
        return None
    return st.selectbox("Classifier", options, key=f"{prefix}-classifier")


def _pick_guide(folder, run_id: str, prefix: str) -> str | None:
    guides = catalog.guide_candidates(folder, run_id)
    if not guides:
        st.warning(
            "Autoguidance needs a guide: a weaker run on the same data (fewer steps or smaller width)."
        )
        return None
    return st.selectbox(
        "Guide run (the weaker model)",
        guides,
        key=f"{prefix}-guide",
        help="a smaller and/or shorter-trained run on the same data; run@ckpt-N is this run's own earlier "
        "checkpoint",
    )


def _pick_interval(prefix: str) -> tuple[float, float] | None:
    if not st.checkbox(
        "Guide only on a sigma interval",
        key=f"{prefix}-use-interval",
        help="Kynkäänniemi et al. 2024: guidance only for sigma in [lo, hi]",
    ):
        return None
    a, b = st.columns(2)
    lo = a.number_input("sigma lo", min_value=0.0, value=0.3, format="%g", key=f"{prefix}-lo")
    hi = b.number_input("sigma hi", min_value=0.0, value=5.0, format="%g", key=f"{prefix}-hi")
    return float(lo), float(hi)


def _random_punk(spec, prefix: str) -> None:
    """Random button callback: a type and accessories of a real training example."""
    import random

    kind, accessories = generation.random_combination(spec, random.randrange(2**31))
    st.session_state[f"{prefix}-type"] = kind
    st.session_state[f"{prefix}-accessories"] = accessories


def pick_condition(run, n: int, prefix: str = "gen"):
    """Widgets for the condition; returns (cond, labels, description)."""
    spec = generation.attribute_spec(run)
    if spec is not None:
        types = ["any", *spec.types]
        st.selectbox("Type", types, key=f"{prefix}-type")
        st.multiselect("Accessories (none selected = any)", spec.accessories, key=f"{prefix}-accessories")
        st.button(
            "Random",
            key=f"{prefix}-random",
            on_click=_random_punk,
            args=(spec, prefix),
            help="a type and accessories that occur together in the training data",
        )
        type_name = st.session_state.get(f"{prefix}-type", "any")
        accessories = st.session_state.get(f"{prefix}-accessories") or []
        cond, warns = generation.attribute_condition(
            spec, n, None if type_name == "any" else type_name, accessories
        )
        for w in warns:
            st.warning(w)
        return cond, None, ", ".join([type_name, *accessories])
    names = generation.class_names(run)
    if not names:
        st.caption("Unconditional run: no class to choose.")
        return None, None, ""
    options = [ALL_CLASSES, *names, NO_CLASS]
    choice = st.selectbox(
        "Class", options, index=ui.query_choice("class", options, ALL_CLASSES), key=f"{prefix}-class"
    )
    cond, labels = generation.class_condition(run, choice, n)
    return cond, labels, choice


RUN_GRID = "the run's grid (Steps above)"


def pick_grid(folder, run_id: str, run, sampler: str):
    """The sigma grid: the run's named grid with the Steps above, or a grid file of the run's grids/
    folder (written by `diffguide tune-grid`), which fixes the steps. Returns (file name or "", its
    sigmas or None); a file that does not fit the run is refused with the command line's message."""
    files = catalog.grid_file_candidates(folder, run_id)
    s = run.config.sample
    choice = st.selectbox(
        "Sigma grid",
        [RUN_GRID, *files],
        key=f"gen-grid-{run_id}",
        help=f"the run's grid is {s.grid}; a grid file from `diffguide tune-grid` (RUN/grids/*.json) is a "
        "grid tuned to this run for one sampler and budget: it fixes the steps",
    )
    if choice == RUN_GRID:
        return "", None
    grid, warns = generation.read_run_grid(run, folder.file(run_id, catalog.GRIDS_DIR, choice), sampler)
    st.caption(
        f"{grid.steps} steps from {choice}"
        + (f" (tuned for {grid.sampler}, {grid.nfe} evaluations)" if grid.sampler else "")
    )
    for w in warns:
        st.warning(w)
    return choice, grid.sigmas


def settings_panel(folder) -> dict | None:
    """The left column's widgets; the chosen settings, or None when nothing can be generated."""
    run_id = ui.run_picker(folder)
    if run_id is None:
        return None
    summary = catalog.summarize(folder, run_id)
    if summary.error:
        st.error(summary.error)
        return None
    if not summary.checkpoints:
        st.error(f"run {run_id!r} has no checkpoint yet; wait for training to write one")
        return None
    checkpoint = st.selectbox("Checkpoint", ["latest", *reversed(summary.checkpoints)], key=f"ckpt-{run_id}")
    run = ui.load_run(folder, run_id, None if checkpoint == "latest" else checkpoint)
    two_d = generation.is_2d(run)
    sampler, steps = ui.sampler_inputs(run.config.sample, "gen", run_id)
    options = ui.sampler_option_inputs(sampler, "gen", run_id)
    grid_name, sigmas = pick_grid(folder, run_id, run, sampler)
    c, d = st.columns(2)
    seed = c.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, key="gen-seed")
    n = d.number_input(
        "Samples",
        min_value=1,
        max_value=20_000 if two_d else 256,
        value=2000 if two_d else 16,
        key=f"gen-n-{'2d' if two_d else 'img'}",
    )
    cond, labels, cond_text = pick_condition(run, int(n))
    choice = pick_guidance(folder, run_id, run)
    if not two_d and st.checkbox(
        "Clip x0 estimates to the data range [-1, 1]",
        key="gen-clip",
        help="Ho et al.'s clip (diffusers' clip_sample), applied after guidance: keeps a strong guidance "
        "weight from pushing the estimates out of the image range",
    ):
        choice["clip"] = (-1.0, 1.0)
    progression = (not two_d) and st.checkbox("Show the denoising progression", key="gen-progression")
    return {
        "folder": folder,
        "run_id": run_id,
        "run": run,
        "two_d": two_d,
        "sampler": sampler,
        "options": options,
        "steps": int(steps) if sigmas is None else len(sigmas) - 1,
        "grid_name": grid_name,
        "sigmas": sigmas,
        "seed": int(seed),
        "n": int(n),
        "cond": cond,
        "labels": labels,
        "cond_text": cond_text,
        "choice": choice,
        "progression": progression,
    }


def run_generation(p: dict) -> dict:
    """Sample with a progress bar; the result (PNG bytes, caption, downloads) for the session state."""
    run = p["run"]
    spec = generation.guidance_spec(p["folder"], **p["choice"])
    denoiser = generation.guided_denoiser(run, spec, ui.guide_loaders())
    bar = st.progress(0.0, text="sampling ...")
    recorder = generation.Progression() if p["progression"] else None
    x = generation.sample(
        run,
        denoiser,
        p["n"],
        sampler=p["sampler"],
        steps=p["steps"],
        seed=p["seed"],
        cond=p["cond"],
        on_progress=lambda f: bar.progress(f, text=f"sampling ... {f:.0%}"),
        recorder=recorder,
        sampler_kwargs=p["options"],
        sigmas=p["sigmas"],
    )
    bar.empty()
    options = "".join(
        f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}" for k, v in p["options"].items()
    )
    grid = f" on {p['grid_name']}" if p["grid_name"] else ""
    title = f"{p['run_id']}: {p['n']} samples, {p['sampler']} {p['steps']} steps{grid}{options}, {spec.describe()}"
    if p["cond_text"]:
        title += f", {p['cond_text']}"
    result = {"run": p["run_id"], "title": title, "two_d": p["two_d"], "seed": p["seed"]}
    if p["two_d"]:
        result["png"] = generation.scatter_png(x, run, title="", labels=p["labels"])
        result["npz"] = generation.npz_bytes(x, p["labels"])
    else:
        nrow = run.num_classes if p["labels"] is not None and p["cond_text"] == ALL_CLASSES else None
        result["png"] = generation.grid_png(x, nrow)
        if recorder is not None:
            result["progression"] = recorder.png()
    return result


def show_result(result: dict) -> None:
    st.image(result["png"], caption=result["title"], width=560 if result["two_d"] else "content")
    stem = f"{result['run'].replace('/', '-')}-seed{result['seed']}"
    st.download_button("Download PNG", result["png"], file_name=f"{stem}.png", mime="image/png", key="dl-png")
    if result.get("npz"):
        st.download_button("Download samples (.npz)", result["npz"], file_name=f"{stem}.npz", key="dl-npz")
    if result.get("progression"):
        png, sigmas = result["progression"]
        st.subheader("Denoising progression")
        st.image(
            png,
            caption="rows in pairs: x at sigma = "
            + ", ".join(f"{s:.3g}" for s in sigmas)
            + " (scaled by 1/max(1, sigma)) above the denoiser's estimate x0_hat",
        )


def main() -> None:
    folder = ui.runs_folder()
    st.title("Generate")
    controls, output = st.columns([1, 2])
    settings, clicked = None, False
    with controls, ui.readable_errors():
        settings = settings_panel(folder)
        if settings is not None:
            clicked = st.button("Generate", type="primary", key="generate")
    with output:
        if clicked:
            st.session_state.pop("gen-result", None)
            with ui.readable_errors("cannot generate"):
                st.session_state["gen-result"] = run_generation(settings)
        result = st.session_state.get("gen-result")
        if result is None:
            st.info("Choose the settings on the left and press Generate.")
        else:
            show_result(result)


main()
