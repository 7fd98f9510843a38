"""Train page: pick a preset, edit its main fields, launch it in the background, watch it, stop it."""

from __future__ import annotations

import streamlit as st

from diffguide.config import load_preset, preset_names
from diffguide.dashboard import catalog, ui
from diffguide.dashboard.jobs import JobRegistry, train_flags
from diffguide.errors import DiffguideError
from diffguide.train.checkpoint import list_checkpoints

# Streamlit badges with Material icons: they render in any browser (no emoji font needed)
STATUS = {
    "running": ":green-badge[:material/play_arrow: running]",
    "stopping": ":orange-badge[:material/hourglass_top: stopping] checkpointing the current step",
    "stopped": ":gray-badge[:material/pause: stopped] (checkpoint kept, can be resumed)",
    "finished": ":blue-badge[:material/check: finished]",
    "failed": ":red-badge[:material/error: failed]",
}


def overrides_for(preset_cfg, values: dict) -> list[str]:
    """`--set` items for the fields whose value differs from the preset's."""
    out = []
    for key, value in values.items():
        section, field = key.split(".")
        current = getattr(getattr(preset_cfg, section), field)
        if value != current:
            out.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
    return out


def launch_form(folder, registry: JobRegistry) -> None:
    names = preset_names()
    preset = st.selectbox("Preset", names, index=ui.query_choice("preset", names, "tiny"), key="preset")
    cfg = load_preset(preset)
    st.caption(cfg.description or "")
    name = st.text_input(
        "Run name", value=preset, key=f"name-{preset}", help="the folder created in the runs folder"
    )
    c1, c2, c3 = st.columns(3)
    t = cfg.train
    steps = c1.number_input("Steps", min_value=1, max_value=10_000_000, value=t.steps, key=f"steps-{preset}")
    batch = c2.number_input(
        "Batch size", min_value=1, max_value=1_000_000, value=t.batch_size, key=f"batch-{preset}"
    )
    lr = c3.number_input(
        "Learning rate",
        min_value=1e-7,
        max_value=1.0,
        value=float(t.lr),
        format="%g",
        step=1e-4,
        key=f"lr-{preset}",
    )
    c4, c5, _ = st.columns(3)
    width_key = "model.width" if cfg.model.arch == "mlp" else "model.channels"
    width_value = cfg.model.width if cfg.model.arch == "mlp" else cfg.model.channels
    width = c4.number_input(
        "Width" if cfg.model.arch == "mlp" else "Channels (U-Net width)",
        min_value=1,
        max_value=8192,
        value=width_value,
        key=f"width-{preset}",
    )
    values = {
        "train.steps": int(steps),
        "train.batch_size": int(batch),
        "train.lr": float(lr),
        width_key: int(width),
    }
    if cfg.data.conditional:
        p = c5.number_input(
            "Label dropout p_uncond",
            min_value=0.0,
            max_value=1.0,
            value=float(t.p_uncond),
            step=0.05,
            key=f"puncond-{preset}",
            help="share of training examples shown with the null label; > 0 enables classifier-free guidance",
        )
        values["train.p_uncond"] = float(p)
    else:
        c5.caption("Unconditional preset: no label dropout.")
    extra = []
    if "--with-amateur" in train_flags():
        if st.checkbox(
            "Also train an amateur for autoguidance",
            key=f"amateur-{preset}",
            help="after this run, train NAME-amateur: half the width, 1/8 of the steps, same data; "
            "the Generate and Compare pages offer it as the autoguidance guide",
        ):
            extra.append("--with-amateur")
    else:
        st.caption("Amateur for autoguidance: launch a second, smaller run (fewer steps, smaller width).")
    sets = overrides_for(cfg, values)
    cmd = (
        f"diffguide train --preset {preset} --out {ui.shown_path(folder.root)} --name {name}"
        + "".join(f" --set {s}" for s in sets)
        + "".join(f" {f}" for f in extra)
    )
    st.caption("Command:")
    st.code(cmd, language="bash", wrap_lines=True)
    if st.button("Launch training", type="primary", key="launch"):
        with ui.readable_errors("cannot launch"):
            job = registry.launch(preset, name, sets, extra)
            st.success(f"Started {job.run} (PID {job.pid}). Progress appears below.")


def job_panel(folder, registry: JobRegistry, job) -> None:
    status = registry.status(job)
    with st.container(border=True):
        head, button = st.columns([4, 1])
        head.markdown(f"**{job.run}** — {STATUS.get(status, status)}")
        shown = job.run
        try:
            prog = catalog.progress(folder.run_dir(job.run))
            amateur = f"{job.run}-amateur"
            expert_done = bool(prog["total"]) and prog["step"] >= prog["total"]
            if (
                expert_done
                and status == "running"
                and "--with-amateur" in job.argv
                and amateur in folder.run_ids()
            ):
                shown, prog = amateur, catalog.progress(folder.run_dir(amateur))  # the amateur trains now
        except DiffguideError:
            prog = {"step": 0, "total": None, "loss": None, "steps_per_s": None, "eta_s": None}
        total = prog["total"] or 0
        if total:
            st.progress(min(1.0, prog["step"] / total), text=f"{shown}: step {prog['step']} / {total}")
        loss = "?" if prog["loss"] is None else f"{prog['loss']:.4f}"
        speed = "?" if prog["steps_per_s"] is None else f"{prog['steps_per_s']:.1f} steps/s"
        eta = catalog.format_eta(prog["eta_s"]) if status == "running" else "-"
        st.caption(f"step {prog['step']} · loss {loss} · {speed} · ETA {eta} · PID {job.pid}")
        if status == "running":
            if button.button("Stop", key=f"stop-{job.id}"):
                with ui.readable_errors("cannot stop"):
                    registry.stop(job.id)
                    st.toast(f"Stopping {job.run}: it checkpoints the current step and exits.")
                    st.rerun()
        elif status in ("stopped", "failed") and registry.running_for(job.run) is None:
            done = prog["total"] is not None and prog["step"] >= prog["total"]
            try:
                has_ckpt = bool(list_checkpoints(folder.run_dir(job.run, must_exist=False) / "checkpoints"))
            except DiffguideError as e:  # e.g. a link out of the runs folder appeared in the run
                has_ckpt = False
                st.error(str(e))
            if has_ckpt and not done and button.button("Resume", key=f"resume-{job.id}"):
                with ui.readable_errors("cannot resume"):
                    registry.resume(job.run)
                    st.rerun()
        if status == "failed":
            tail = registry.log_tail(job)
            errors = [line for line in tail.splitlines() if "error" in line.lower()]
            st.error(errors[-1] if errors else "the training process ended without finishing; see its log")
        with st.expander("log"):
            st.code(registry.log_tail(job, 30) or "(empty)")


def jobs_section(folder, registry: JobRegistry) -> None:
    jobs = registry.jobs()[:8]
    if not jobs:
        st.caption("No training launched from this dashboard yet.")
        return
    any_running = any(registry.status(j) in ("running", "stopping") for j in jobs)

    def panel():
        with ui.readable_errors():
            current = registry.jobs()[:8]
            for job in current:
                job_panel(folder, registry, job)
            if any_running and not any(registry.status(j) in ("running", "stopping") for j in current):
                st.rerun()  # everything ended: redraw the page once and stop polling

    st.fragment(run_every=1.5 if any_running else None)(panel)()


def resume_section(folder, registry: JobRegistry) -> None:
    candidates = [
        r.run
        for r in catalog.list_runs(folder)
        if r.checkpoints and not r.finished and registry.running_for(r.run) is None
    ]
    if not candidates:
        return
    st.subheader("Resume a stopped run")
    run = st.selectbox("Stopped run", candidates, key="resume-run")
    if st.button("Resume", key="resume-any"):
        with ui.readable_errors("cannot resume"):
            registry.resume(run)
            st.rerun()


def main() -> None:
    folder = ui.runs_folder()
    st.title("Train")
    with ui.readable_errors():
        registry = JobRegistry(folder)
        left, right = st.columns([1, 1])
        with left:
            st.subheader("New run")
            launch_form(folder, registry)
        with right:
            st.subheader("Training jobs")
            jobs_section(folder, registry)
            resume_section(folder, registry)


main()
