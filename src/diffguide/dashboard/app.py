"""The diffguide dashboard (Streamlit script): `diffguide dashboard --runs DIR` starts it.

Pages: Runs (table, loss curves, samples), Train (launch / watch / stop background training),
Generate (sampler, guidance, condition), Compare (guidance side by side, weight sweeps).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from diffguide.dashboard import ui

HERE = Path(__file__).parent

st.set_page_config(page_title="diffguide dashboard", page_icon=":material/blur_on:", layout="wide")

pages = [
    st.Page(
        str(HERE / "views" / "runs.py"),
        title="Runs",
        icon=":material/table_chart:",
        url_path="runs",
        default=True,
    ),
    st.Page(
        str(HERE / "views" / "train.py"), title="Train", icon=":material/model_training:", url_path="train"
    ),
    st.Page(
        str(HERE / "views" / "generate.py"),
        title="Generate",
        icon=":material/auto_awesome:",
        url_path="generate",
    ),
    st.Page(
        str(HERE / "views" / "compare.py"), title="Compare", icon=":material/compare:", url_path="compare"
    ),
]
page = st.navigation(pages)
with st.sidebar:
    st.caption(f"Runs folder: `{ui.shown_path(ui.runs_folder().root)}`")
page.run()
