"""The demo study: end to end through the real command, plus its pieces against known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from diffguide.study import StudySettings, choose_weight
from diffguide.study_plots import grid_points, integrate_score

METRIC_KEYS = {"precision", "coverage", "mean_logp", "sliced_w2", "w"}


def test_demo_fast_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--fast", "--out", str(out), "--seed", "1", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in result.stdout
    assert "| no guidance | 1 |" in result.stdout  # the metrics table is printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("none", "cfg", "autoguidance", "ground_truth"):
        assert set(metrics[key]) >= METRIC_KEYS, key
        for name in ("precision", "coverage"):
            assert 0.0 <= metrics[key][name] <= 1.0
    assert metrics["none"]["w"] == 1.0
    assert {r["method"] for r in metrics["sweep"]} >= {"cfg", "autoguidance"}
    for row in metrics["sweep"]:
        assert {"method", "w", "precision", "coverage"} <= set(row)
    # the reported w is one of the sweep's (or 1, no guidance) and its numbers are that row's
    for key in ("cfg", "autoguidance"):
        w = metrics[key]["w"]
        rows = [r for r in metrics["sweep"] if r["method"] == key and r["w"] == w]
        assert w == 1.0 or (
            rows and rows[0]["precision"] == pytest.approx(metrics[key]["precision"], abs=1e-4)
        )
    assert "selection_rule" in metrics and metrics["timings_s"]["total"] > 0
    assert metrics["scurve"]["expert_steps"] == 400 and metrics["scurve"]["amateur_steps"] == 100
    for name in ("study_panel.png", "weight_sweep.png", "scurve_autoguidance.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000, name
    report = (out / "report.md").read_text()
    assert "| autoguidance |" in report and "![study panel](study_panel.png)" in report
    # the expert's folder names its amateur, so `sample --guidance auto` finds it
    note = json.loads((out / "runs" / "demo-expert" / "guidance.json").read_text())
    assert note == {"amateur": "../demo-expert-amateur"}


def test_choose_weight_rule():
    none = {"precision": 0.7, "coverage": 0.8}
    rows = [
        {"w": 1.5, "precision": 0.75, "coverage": 0.79},
        {"w": 2.0, "precision": 0.80, "coverage": 0.76},
        {"w": 3.0, "precision": 0.90, "coverage": 0.70},  # too much variety lost
    ]
    assert choose_weight(rows, none, 0.05)["w"] == 2.0
    assert choose_weight(rows, none, 0.2)["w"] == 3.0
    worse = [{"w": 2.0, "precision": 0.6, "coverage": 0.8}]
    assert choose_weight(worse, none, 0.05)["w"] == 1.0  # guidance that does not help is not chosen


def test_integrated_score_is_the_log_density():
    """Least-squares integration of an exact score field returns log p up to a constant."""
    res = 60
    xs, _, pts = grid_points((0.3, -0.2), 1.0, res)
    p = pts.double().requires_grad_(True)
    a = -((p - torch.tensor([0.3, 0.2])) ** 2).sum(1) / 0.1
    b = -((p - torch.tensor([0.0, -0.5])) ** 2).sum(1) / 0.3
    logp = torch.logaddexp(a, b)
    (score,) = torch.autograd.grad(logp.sum(), p)
    phi = integrate_score(score.numpy(), res, xs[1] - xs[0])
    truth = logp.detach().numpy().reshape(res, res)
    truth = truth - truth.mean()
    assert np.abs(phi - truth).max() < 0.02 * np.abs(truth).max()


def test_fast_settings_are_small():
    fast, full = StudySettings.fast(), StudySettings()
    assert fast.n_samples < full.n_samples and fast.scurve_steps < full.scurve_steps
    assert full.scurve_steps == 5000 and full.scurve_amateur_steps == 1000  # seed 000's pair
