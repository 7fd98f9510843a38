"""The Streamlit dashboard: `diffguide dashboard [--runs DIR]` (see docs/dashboard.md).

app.py is the Streamlit script; views/ holds one script per page; the computations live in plain
modules (catalog, jobs, generation, compare) and every browser-supplied name goes through safety.
"""

from __future__ import annotations

from pathlib import Path


def app_path() -> Path:
    """The Streamlit script to pass to `streamlit run`."""
    return Path(__file__).with_name("app.py")
