"""Streamlit helpers shared by the pages: the runs folder, readable errors, cached run loading."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import traceback
from pathlib import Path

import streamlit as st

from diffguide.dashboard.safety import RunsFolder, UnsafePath, check_name
from diffguide.errors import DiffguideError
from diffguide.samplers.registry import SAMPLERS, sampler_option_defaults, sampler_options

ENV_RUNS = "DIFFGUIDE_DASHBOARD_RUNS"  # set by `diffguide dashboard --runs DIR`
DEFAULT_RUNS = "runs"
ENV_DEVICE = "DIFFGUIDE_DASHBOARD_DEVICE"  # set by `diffguide dashboard --device DEVICE` (checked there)

log = logging.getLogger("diffguide.dashboard")

try:  # st.rerun / st.stop work by raising these; they must pass through readable_errors
    from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException
except ImportError:  # pragma: no cover - older Streamlit
    from streamlit.runtime.scriptrunner.exceptions import ScriptControlException  # type: ignore


def runs_folder() -> RunsFolder:
    return RunsFolder(os.environ.get(ENV_RUNS) or DEFAULT_RUNS)


def device():
    """Where the pages load models and sample: `dashboard --device` (default auto: the GPU when there
    is one, else the CPU)."""
    from diffguide.train.devices import resolve_device

    return resolve_device(os.environ.get(ENV_DEVICE) or "auto", flag="--device")


def shown_path(path: Path) -> str:
    """A path as the user typed it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


@contextlib.contextmanager
def readable_errors(what: str = ""):
    """Show errors as a red message box, never a stack trace (the trace goes to the server's log)."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except ScriptControlException:
        raise
    except DiffguideError as e:
        st.error(prefix + str(e))
    except Exception as e:  # noqa: BLE001 - a dashboard must keep working and say what failed
        log.error("dashboard error:\n%s", traceback.format_exc())
        st.error(f"{prefix}unexpected error {type(e).__name__}: {e}")


@st.cache_resource(max_entries=8, show_spinner="Loading the run ...")
def _load_run(run_dir: str, checkpoint: str | None, stamp: float, use_ema: bool = True):
    from diffguide.models.runs import load_run

    return load_run(run_dir, checkpoint, use_ema=use_ema, device=device())


def load_run(folder: RunsFolder, run_id: str, checkpoint: str | None = None):
    """A run's model (EMA weights), cached by folder, checkpoint and the checkpoint's modification time.

    run_dir refuses the run when any link in it (checkpoints/, a checkpoint file, latest) leads out of
    the runs folder, so the library's loader below reads only checked files.
    """
    run_dir = folder.run_dir(run_id)
    if checkpoint is not None:
        path = folder.file(run_id, "checkpoints", check_name(checkpoint, "checkpoint name"))
        if not path.is_file():
            raise UnsafePath(f"run {run_id!r} has no checkpoint {checkpoint!r}")
        stamp = path.stat().st_mtime
    else:
        latest = folder.file(run_id, "checkpoints", "latest")
        stamp = latest.stat().st_mtime if latest.is_file() else 0.0
    return _load_run(str(run_dir), None if checkpoint is None else str(path), stamp)


def _load_guide_run(run_dir, checkpoint=None, use_ema: bool = True):
    """The guidance builder's run loader: cached like load_run (paths checked by generation.guide_path)."""
    run_dir = Path(run_dir)
    stamp_file = Path(checkpoint) if checkpoint is not None else run_dir / "checkpoints" / "latest"
    stamp = stamp_file.stat().st_mtime if stamp_file.is_file() else 0.0
    return _load_run(str(run_dir), None if checkpoint is None else str(checkpoint), stamp, use_ema)


def guide_loaders():
    """Loaders for diffguide.guidance.spec.build_guided that reuse the dashboard's caches."""
    from diffguide.guidance.spec import Loaders

    return Loaders(run=_load_guide_run, classifier=lambda path: load_classifier(Path(path)))


@st.cache_resource(max_entries=4, show_spinner=False)
def _load_classifier(path: str, stamp: float):
    from diffguide.classifiers.points import load_classifier

    return load_classifier(path, device=device())


def load_classifier(path: Path):
    weights = path / "classifier.safetensors"
    return _load_classifier(str(path), weights.stat().st_mtime if weights.is_file() else 0.0)


def query_choice(key: str, options: list[str], default: str | None = None) -> int:
    """Index of the option named by ?key=... in the page's URL (checked), else of `default`, else 0.

    A name in the URL that is not an option (a typo, or a path such as ../x) is shown as an error.
    """
    wanted = st.query_params.get(key)
    if wanted is not None and wanted in options:
        return options.index(wanted)
    if wanted is not None:
        with readable_errors():
            if key == "run":
                check_name_path(wanted)
            raise DiffguideError(f"no {key} named {wanted!r} here; choose one below")
    return options.index(default) if default in options else 0


def check_name_path(run_id: str) -> None:
    from diffguide.dashboard.safety import split_run_id

    split_run_id(run_id)


def run_picker(folder: RunsFolder, label: str = "Run", key: str = "run", runs: list[str] | None = None):
    """A select of run ids (preselected by ?run=...); None with a hint when the folder holds no run."""
    runs = folder.run_ids() if runs is None else runs
    if not runs:
        st.info(
            f"No runs in {str(folder.root)!r} yet. Train one on the Train page, or start the dashboard on "
            "another folder: `diffguide dashboard --runs out/demo` (after `make demo`)."
        )
        return None
    return st.selectbox(label, runs, index=query_choice("run", runs), key=key)


def sampler_inputs(sample_config, prefix: str, run_id: str) -> tuple[str, int]:
    """Sampler and step-count widgets side by side, defaulting to the run's own sample config."""
    samplers = list(SAMPLERS)
    left, right = st.columns(2)
    sampler = left.selectbox(
        "Sampler",
        samplers,
        index=samplers.index(sample_config.sampler) if sample_config.sampler in samplers else 0,
        key=f"{prefix}-sampler-{run_id}",
    )
    steps = right.number_input(
        "Steps", min_value=1, max_value=1000, value=sample_config.steps, key=f"{prefix}-steps-{run_id}"
    )
    return sampler, steps


def sampler_option_inputs(sampler: str, prefix: str, run_id: str) -> dict:
    """A text field for the sampler's own options ("eta=0.5, s_churn=40"), checked like --sampler-option."""
    defaults = sampler_option_defaults(sampler)
    if not defaults:
        return {}
    text = st.text_input(
        "Sampler options",
        value="",
        placeholder=", ".join(f"{k}={v!r}".replace("'", '"') for k, v in defaults.items()),
        key=f"{prefix}-options-{run_id}-{sampler}",
        help="key=value pairs separated by commas; empty: the defaults shown",
    )
    pairs = [part.strip() for part in text.split(",") if part.strip()]
    return sampler_options(sampler, pairs)


def method_option_inputs(kind: str, prefix: str) -> dict:
    """A guidance method's own options (METHODS[kind].options), one widget each, its default preselected."""
    from diffguide.guidance.spec import METHODS

    chosen = {}
    for key, default in METHODS[kind].options.items():
        label, wkey = f"{kind} {key}", f"{prefix}-{kind}-{key}"
        if key == "space":
            chosen[key] = st.selectbox(label, ["x0", "eps"], index=["x0", "eps"].index(default), key=wkey)
        elif isinstance(default, str):  # layer names of the same-network guides (pag, seg, slg, dropout)
            chosen[key] = st.text_input(label, value=default, key=wkey, help="e.g. mid, down.2, up")
        elif isinstance(default, int):
            chosen[key] = int(st.number_input(label, value=default, step=1, key=wkey))
        elif math.isinf(default):  # an optional level: empty keeps the default (off)
            value = st.number_input(f"{label} (empty: inf, the default)", value=None, key=wkey)
            if value is not None:
                chosen[key] = float(value)
        else:
            chosen[key] = float(st.number_input(label, value=float(default), key=wkey))
    return chosen
