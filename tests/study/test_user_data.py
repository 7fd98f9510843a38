"""`diffguide demo --data FILE` and `guidance-bench --data FILE`: the study on your own 2D data."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch

from diffguide.study.evaluation import PointsEvaluation, user_data
from diffguide.study.experiment import StudySettings
from diffguide.study.guidance_bench import BenchSettings, run_benchmark
from tests.helpers import run_cli


def rings(path, n=800, labelled=True):
    """Two noisy rings (radius 1 and 2), class = ring, as a csv with a label column."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 2 * np.pi, n)
    y = np.arange(n) % 2
    r = 1.0 + y + 0.05 * rng.normal(size=n)
    x = np.column_stack([r * np.cos(t), r * np.sin(t)])
    table, header = (np.column_stack([x, y]), "a,b,label") if labelled else (x, "a,b")
    np.savetxt(path, table, delimiter=",", header=header, comments="")
    return path


def test_points_metrics_of_a_translated_copy_are_known():
    """Samples = held-out-free reference moved by v: each sample's nearest data point is at most |v|
    away (exactly |v| when |v| is far below the point spacing), and the sliced W2 of a translation is
    |v| times the root mean square of cos(angle) over the directions, |v| / sqrt(2) in 2D."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(3000, 2, generator=g, dtype=torch.float64) * 3
    run = types.SimpleNamespace(dataset=types.SimpleNamespace(points=points, labels=None), num_classes=0)
    ev = PointsEvaluation(run, n_reference=10_000, seed=0, n_truth=0)
    v = torch.tensor([1e-4, 0.0], dtype=torch.float64)
    m = ev.evaluate(ev.reference + v)
    assert m["precision"] is None and m["coverage"] is None and m["mean_logp"] is None
    assert m["distance_to_data"] == pytest.approx(1e-4, rel=1e-6)
    big = ev.evaluate(ev.reference + torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert big["sliced_w2"] == pytest.approx(0.5 / math.sqrt(2), rel=0.08)
    assert ev.evaluate(ev.reference)["sliced_w2"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.e2e
def test_demo_on_your_points_skips_exact_metrics_with_the_reason(tmp_path):
    data = rings(tmp_path / "rings.csv")
    out = tmp_path / "demo"
    r = run_cli("demo", "--fast", "--data", str(data), "--out", str(out), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["exact"] is False and m["data"]["classes"] == 2
    assert "exact density" in m["data"]["skipped"]["exact metrics"]
    assert "skipped exact metrics: precision, coverage and mean log p need an exact density" in r.stdout
    for key in ("none", "autoguidance", "cfg", "ground_truth"):
        assert m[key]["precision"] is None and math.isfinite(m[key]["sliced_w2"]), key
    # the trained expert is closer to the data than the data's spread (rings of radius 1 and 2)
    assert m["none"]["distance_to_data"] < 0.3
    assert m["selection_rule"].startswith("without an exact density")
    assert (out / "samples.png").read_bytes().startswith(b"\x89PNG")
    assert m["scurve"] is None and "S-curve" in m["data"]["skipped"]
    report = (out / "report.md").read_text()
    assert "rings.csv" in report and "skipped: exact metrics" in report


@pytest.mark.e2e
def test_demo_on_an_unlabelled_mixture_file_is_exact_and_skips_cfg(tmp_path):
    """One class: no condition, so CFG is skipped with the reason; the metrics are the exact ones (the
    ground-truth samples of a mixture sit inside its 99% region about 99% of the time)."""
    mix = {"weights": [0.5, 0.5], "means": [[-1.5, 0], [1.5, 0]],
           "covs": [[[0.05, 0], [0, 0.3]], [[0.3, 0], [0, 0.05]]]}  # fmt: skip
    (tmp_path / "mix.json").write_text(json.dumps(mix))
    out = tmp_path / "demo"
    r = run_cli("demo", "--fast", "--data", str(tmp_path / "mix.json"), "--out", str(out), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["exact"] is True and m["cfg"] is None and "CFG" in m["data"]["skipped"]
    assert not any(row["method"].startswith("cfg") for row in m["sweep"])
    assert m["ground_truth"]["precision"] == pytest.approx(0.99, abs=0.015)
    assert 0 <= m["none"]["precision"] <= 1 and "skipped CFG: the data has no class labels" in r.stdout


def test_guidance_bench_on_your_points(tmp_path):
    """The benchmark on a points file: every method row scored by sliced W2 (exact metrics None, with
    the reason in the report), the exact classifier skipped (no mixture), no figure (it plots precision)."""
    data = rings(tmp_path / "rings.csv", n=400)
    study = StudySettings.fast()
    study = StudySettings(**{**study.__dict__, "n_samples": 150, "amateur_steps": 60,
                             "expert_overrides": ["model.depth=2", "train.steps=120"]})  # fmt: skip
    settings = BenchSettings(study=study, max_weights=1, timing_repeats=1).with_data(str(data))
    assert settings.datasets == ("rings",)
    metrics = run_benchmark(tmp_path / "bench", settings, log=lambda *a: None)
    d = metrics["datasets"]["rings"]
    assert d["exact"] is False and "exact density" in d["metrics_skipped"]
    assert "classifier" in d["skipped"]
    for name, row in d["methods"].items():
        assert row["precision"] is None and math.isfinite(row["sliced_w2"]), name
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "## rings (points)" in report and "Skipped metrics:" in report
    assert not (tmp_path / "bench" / "guidance_bench.png").exists()


@pytest.mark.parametrize("command", ["demo", "guidance-bench"])
def test_bad_data_file_exits_2_before_training(command, tmp_path):
    (tmp_path / "three.csv").write_text("1,2,3\n4,5,6\n7,8,9\n")
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    for name, words in (("three.csv", "3-dimensional data; the demo draws 2D data (D = 2)"),
                        ("nan.npy", "row 1: [nan, 2.0] is not finite")):  # fmt: skip
        out = tmp_path / f"out-{name}"
        r = run_cli(command, "--data", str(tmp_path / name), "--out", str(out))
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert name in lines[0] and words in lines[0], lines[0]
        assert not out.exists()


def test_user_data_overrides_name_the_file_and_the_set(tmp_path):
    data = user_data(rings(tmp_path / "r.csv", labelled=False))
    assert not data.exact and not data.conditional and data.name == "r"
    assert 'data.name="points"' in data.overrides and "data.conditional=false" in data.overrides
