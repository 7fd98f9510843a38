"""What the runs folder holds: one summary row per run, training progress, guides and classifiers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from diffguide.config import RunConfig, preset_summaries
from diffguide.dashboard.safety import NAME, RunsFolder, UnsafePath, check_name, inside, split_run_id
from diffguide.errors import DiffguideError
from diffguide.models.runs import load_config
from diffguide.train.checkpoint import list_checkpoints
from diffguide.train.logs import read_metrics


@dataclass
class RunSummary:
    """One row of the Runs table."""

    run: str  # run id, e.g. "tiny" or "tree-edm/amateur"
    dataset: str
    preset: str
    conditional: bool
    steps_done: int
    steps_total: int
    last_loss: float | None
    size_bytes: int
    modified: float  # unix time of the newest file
    checkpoints: list[str]
    error: str = ""  # why the config could not be read, if it could not

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.steps_total > 0


def human_size(n: int) -> str:
    """1536 -> '1.5 KB'."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def preset_of(cfg: RunConfig) -> str:
    """The preset a run came from: its name if that is a preset, else the preset with its description."""
    summaries = preset_summaries()
    names = [n for n, _ in summaries]
    if cfg.name in names:
        return cfg.name
    base = cfg.name.removesuffix("-amateur")
    if base != cfg.name and base in names:
        return f"{base} (amateur)"
    same = [n for n, d in summaries if d and d == cfg.description]
    return same[0] if same else "(custom)"


def _folder_stats(path: Path) -> tuple[int, float]:
    size, newest = 0, 0.0
    for f in path.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                st = f.stat()
                size += st.st_size
                newest = max(newest, st.st_mtime)
        except OSError:
            continue
    return size, newest


def _step_of(checkpoint: Path) -> int:
    try:
        return int(checkpoint.name.split("-")[1].split(".")[0])
    except (IndexError, ValueError):
        return 0


def summarize(folder: RunsFolder, run_id: str) -> RunSummary:
    """The Runs-table row of one run; an unreadable config or a link out of the runs folder gives a row
    with `error` set."""
    try:
        path = folder.run_dir(run_id)  # checks every file below it: checkpoints/, metrics.jsonl, ...
    except UnsafePath as e:
        return RunSummary(run_id, "?", "?", False, 0, 0, None, 0, 0.0, [], str(e))
    ckpts = list_checkpoints(path / "checkpoints")
    metrics = read_metrics(path)
    size, modified = _folder_stats(path)
    losses = [m["loss"] for m in metrics if isinstance(m.get("loss"), (int, float))]
    done = max([_step_of(c) for c in ckpts] + [0])
    try:
        cfg = load_config(path)
    except DiffguideError as e:
        return RunSummary(
            run_id, "?", "?", False, done, 0, None, size, modified, [c.name for c in ckpts], str(e)
        )
    return RunSummary(
        run=run_id,
        dataset=cfg.data.name,
        preset=preset_of(cfg),
        conditional=cfg.data.conditional,
        steps_done=done,
        steps_total=cfg.train.steps,
        last_loss=losses[-1] if losses else None,
        size_bytes=size,
        modified=modified,
        checkpoints=[c.name for c in ckpts],
    )


def list_runs(folder: RunsFolder) -> list[RunSummary]:
    """Summaries of every run in the folder, newest first."""
    rows = [summarize(folder, r) for r in folder.run_ids()]
    return sorted(rows, key=lambda r: r.modified, reverse=True)


def table_rows(rows: list[RunSummary]) -> list[dict]:
    """Rows for st.dataframe: plain values with readable column names."""
    return [
        {
            "run": r.run,
            "dataset": r.dataset,
            "preset": r.preset,
            "steps": f"{r.steps_done} / {r.steps_total}",
            "last loss": None if r.last_loss is None else round(r.last_loss, 5),
            "size": human_size(r.size_bytes),
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified)) if r.modified else "",
        }
        for r in rows
    ]


def progress(run_dir: Path, total: int | None = None) -> dict:
    """Live training progress from metrics.jsonl: step, total, loss, steps_per_s, eta_s (None if unknown)."""
    records = read_metrics(run_dir)
    if total is None:
        try:
            total = load_config(run_dir).train.steps
        except DiffguideError:
            total = None
    out = {"step": 0, "total": total, "loss": None, "steps_per_s": None, "eta_s": None}
    if not records:
        return out
    last = records[-1]
    out["step"] = int(last.get("step", 0))
    out["loss"] = last.get("loss")
    rate = last.get("steps_per_s")
    if isinstance(rate, (int, float)) and rate > 0:
        out["steps_per_s"] = float(rate)
        if total:
            out["eta_s"] = max(0.0, (total - out["step"]) / rate)
    return out


def format_eta(seconds: float | None) -> str:
    """90 -> '1m 30s'; None -> '?'."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _noted(folder: RunsFolder, run_id: str, key: str) -> str | None:
    """The id (relative to the runs folder) of the guide a run's guidance.json names, if inside the folder."""
    from diffguide.guidance.pairing import read_guidance_note

    run_dir = folder.run_dir(run_id)
    try:
        entry = read_guidance_note(run_dir).get(key)
    except DiffguideError:
        return None
    if not isinstance(entry, str):
        return None
    path = run_dir / entry
    if not inside(folder.root, path):
        return None
    rel = path.resolve().relative_to(folder.root.resolve())
    return "/".join(rel.parts) or None


def guide_candidates(folder: RunsFolder, run_id: str) -> list[str]:
    """Runs that can guide `run_id` in autoguidance: runs on the same data with the same conditioning.

    The amateur named in the run's guidance.json (written by `diffguide train --with-amateur`) comes first.
    """
    try:
        cfg = load_config(folder.run_dir(run_id))
    except DiffguideError:
        return []
    out = []
    for other in folder.run_ids():
        if other == run_id:
            continue
        try:
            ocfg = load_config(folder.run_dir(other))
        except DiffguideError:
            continue
        same_data = ocfg.data.name == cfg.data.name and ocfg.data.options == cfg.data.options
        if same_data and ocfg.data.conditional == cfg.data.conditional:
            out.append(other)
    noted = _noted(folder, run_id, "amateur")
    out = sorted(out, key=lambda o: (o != noted, not o.endswith("amateur"), o))
    # an earlier checkpoint of the run itself is an amateur too (the S-curve demo's guide)
    earlier = list_checkpoints(folder.run_dir(run_id) / "checkpoints")[:-1]
    return out + [f"{run_id}{AT}{c.name}" for c in reversed(earlier)]


AT = "@"  # "run@ckpt-00001000.safetensors": a run at one of its checkpoints


def split_guide(guide_id: str) -> tuple[str, str | None]:
    """'run@ckpt-...' -> ('run', 'ckpt-...'); 'run' -> ('run', None)."""
    run_id, _, checkpoint = guide_id.partition(AT)
    return run_id, checkpoint or None


def classifier_candidates(folder: RunsFolder, run_id: str) -> list[str]:
    """Noise-conditional classifier folders (classifier2d) for a run: the one its guidance.json names,
    RUN-classifier beside it, and any inside its folder."""
    from diffguide.classifiers.points import CONFIG_FILE, WEIGHTS_FILE

    def ok(path: Path) -> bool:
        return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file() and folder.contains(path)

    base = folder.run_dir(run_id)
    found = []
    noted = _noted(folder, run_id, "classifier")
    if noted:
        found.append(noted)
    if ok(base.parent / f"{base.name}-classifier"):
        rel = (base.parent / f"{base.name}-classifier").relative_to(folder.root)
        found.append("/".join(rel.parts))
    for sub in sorted(base.iterdir()):
        if NAME.fullmatch(sub.name) and sub.is_dir() and ok(sub):
            found.append(f"{run_id}/{sub.name}")
    out = []
    for f in found:
        if f not in out and ok(folder.root / f):
            out.append(f)
    return out


def classifier_dir(folder: RunsFolder, classifier_id: str) -> Path:
    """The checked folder of a classifier id from classifier_candidates (no link in it leads out)."""
    return folder.checked_dir(folder.root.joinpath(*split_run_id(classifier_id)), classifier_id)


def image_classifier_dir(folder: RunsFolder, data_name: str) -> Path | None:
    """RUNS/classifier-DATA, the feature classifier of the image metrics (`diffguide train-classifier`);
    None when there is none, UnsafePath when a link in it leads out of the runs folder."""
    name = f"classifier-{check_name(data_name, 'dataset name')}"
    path = folder.root / name
    ok = (path / "classifier.json").is_file() and (path / "model.safetensors").is_file()
    return folder.checked_dir(path, name) if ok else None


GRIDS_DIR = "grids"  # where `diffguide tune-grid` writes a run's grid files by default


def grid_file_candidates(folder: RunsFolder, run_id: str) -> list[str]:
    """Names of the grid files (*.json) in the run's grids/ folder, sorted; each inside the runs folder."""
    base = folder.run_dir(run_id) / GRIDS_DIR
    if not base.is_dir() or not folder.contains(base):
        return []
    return [
        p.name
        for p in sorted(base.glob("*.json"))
        if NAME.fullmatch(p.name) and p.is_file() and inside(folder.root, p)
    ]
