"""Runs page: every run in the folder, its loss curve and latest samples, and TensorBoard on the folder."""

from __future__ import annotations

import shlex

import streamlit as st

from diffguide.dashboard import catalog, tensorboard, ui
from diffguide.dashboard.jobs import JobRegistry
from diffguide.train.logs import read_metrics


def loss_chart(records: list[dict]):
    """Training loss against step (log scale) as an Altair chart."""
    import altair as alt
    import pandas as pd

    rows = [
        {"step": r["step"], "loss": r["loss"]}
        for r in records
        if isinstance(r.get("loss"), (int, float)) and r["loss"] > 0
    ]
    df = pd.DataFrame(rows)
    return (
        alt.Chart(df)
        .mark_line()
        .encode(x=alt.X("step:Q", title="step"), y=alt.Y("loss:Q", scale=alt.Scale(type="log"), title="loss"))
        .properties(height=280)
    )


def main() -> None:
    folder = ui.runs_folder()
    st.title("Runs")
    st.caption(f"Every run folder in `{ui.shown_path(folder.root)}` (one with a config.json).")
    with ui.readable_errors():
        rows = catalog.list_runs(folder)
        if not rows:
            ui.run_picker(folder, runs=[])
            return
        st.dataframe(catalog.table_rows(rows), hide_index=True, width="stretch")
        run_details(folder, rows)
    with ui.readable_errors("TensorBoard"):
        tensorboard_section(folder)


def run_details(folder, rows: list[catalog.RunSummary]) -> None:
    """The chosen run's figures, loss curve and latest samples."""
    run_id = ui.run_picker(folder, "Show run", runs=[r.run for r in rows])
    summary = next(r for r in rows if r.run == run_id)
    if summary.error:
        st.error(summary.error)
        return
    running = JobRegistry(folder).running_for(run_id)
    if running is not None:
        st.info(f"{run_id} is training now (PID {running.pid}); watch it on the Train page.")
    a, b, c, d = st.columns(4)
    a.metric("steps", f"{summary.steps_done} / {summary.steps_total}")
    b.metric("last loss", "?" if summary.last_loss is None else f"{summary.last_loss:.4f}")
    c.metric("dataset", summary.dataset)
    d.metric("size", catalog.human_size(summary.size_bytes))
    left, right = st.columns(2)
    with left:
        st.subheader("Loss")
        records = read_metrics(folder.run_dir(run_id))
        if records:
            st.altair_chart(loss_chart(records), width="stretch")
        else:
            st.caption("No metrics.jsonl yet.")
    with right:
        st.subheader("Latest samples")
        png = folder.file(run_id, "samples.png")
        if png.is_file():
            st.image(png.read_bytes(), caption=f"{run_id}/samples.png (written when training finishes)")
        else:
            st.caption("No samples.png yet (written when training finishes); try the Generate page.")


def tensorboard_section(folder) -> None:
    """The command to browse every run's tb/ folder, and a TensorBoard the dashboard starts and stops."""
    st.subheader("TensorBoard")
    st.markdown("Every run writes TensorBoard event files to its `tb/` folder. To browse all runs:")
    st.code(
        f"tensorboard --logdir {shlex.quote(ui.shown_path(folder.root))} --host 127.0.0.1", language="bash"
    )
    registry = JobRegistry(folder)
    job = tensorboard.running(registry)
    if job is None:
        if st.button(
            "Start TensorBoard",
            key="tb-start",
            help="runs the command above on a free port of this machine (127.0.0.1) in the background",
        ):
            with st.spinner("Starting TensorBoard ..."):
                tensorboard.start(registry)
            st.rerun()
        return
    address = tensorboard.url(job)
    left, right = st.columns([1, 1])
    left.link_button("Open TensorBoard", address, type="primary")
    if right.button("Stop TensorBoard", key="tb-stop"):
        tensorboard.stop(registry, job)
        st.rerun()
    st.caption(
        f"TensorBoard on [{address}]({address}) (PID {job.pid}), started from this dashboard; it listens on "
        "this machine only (from another machine, forward the port: `ssh -L PORT:127.0.0.1:PORT HOST`)."
    )


main()
