"""The guidance benchmark: end to end through the real command, its numbers recomputed from its samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffguide.errors import ConfigError
from diffguide.guidance.spec import METHODS, GuidanceSpec, Method, build_guided
from diffguide.metrics.points import METRICS, MixtureMetrics, class_labels
from diffguide.models.runs import load_run
from diffguide.samplers.generation import generate, sigma_grid
from diffguide.study.experiment import StudySettings, report_weight
from diffguide.study.guidance_bench import DEFAULT_WEIGHTS, MARKER, BenchSettings, check_out, variants
from tests.helpers import run_cli

FAST = StudySettings.fast()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One fast run of `diffguide guidance-bench` shared by the tests below: (out, metrics)."""
    out = tmp_path_factory.mktemp("gbench") / "bench"
    result = run_cli("guidance-bench", "--out", str(out), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in result.stdout
    return out, json.loads((out / "metrics.json").read_text())


def _samples(out, key: str) -> torch.Tensor:
    return torch.from_numpy(np.load(out / "samples.npz")[key])


@pytest.mark.e2e
def test_fast_benchmark_writes_every_method_on_both_datasets(bench):
    out, metrics = bench
    for name in ("report.md", "metrics.json", "samples.npz", "guidance_bench.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert metrics["benchmark"] == MARKER
    wanted = {v.name for v in variants()} - {"none"}
    assert {"apg-eps", "cfg-interval", "cfg-linear"} <= wanted and set(METHODS) - {"none"} <= wanted
    report = (out / "report.md").read_text()
    attention = {"pag", "seg"}  # these MLP runs have no attention: skipped with the builder's reason
    images = {"fdg"}  # nor images: skipped likewise
    for dataset in ("tree", "8gaussians"):
        d = metrics["datasets"][dataset]
        assert set(d["methods"]) == wanted - attention - images, dataset
        assert set(d["skipped"]) == attention | images, dataset
        assert all("perturbs self-attention layers" in d["skipped"][k] for k in attention)
        assert "fdg splits images into frequency bands" in d["skipped"]["fdg"]
        assert set(d["unguided"]) == {"heun", "euler"}  # CFG++ is compared with unguided Euler
        for name, m in d["methods"].items():
            assert 0 <= m["precision"] <= 1 and 0 <= m["coverage"] <= 1 and m["time_ratio"] > 0, name
            rows = [r for r in d["sweep"] if r["method"] == name]
            assert len(rows) == 2 and m["w"] in [r["w"] for r in rows], name  # fast: 2 weights per row
            assert f"| {name} | {m['sampler']} | {m['w']:g} |" in report
        assert d["methods"]["cfg++"]["sampler"] == "euler"


@pytest.mark.e2e
def test_reported_row_equals_metrics_recomputed_from_its_samples(bench):
    out, metrics = bench
    run = load_run(out / "runs" / "tree" / "demo-expert")
    evaluator = MixtureMetrics(run.dataset.mixture, n_reference=FAST.n_reference, seed=FAST.seed + 12345)
    labels = torch.from_numpy(np.load(out / "samples.npz")["tree/labels"])
    for name in ("auto", "apg-eps", "cfg++"):
        m = metrics["datasets"]["tree"]["methods"][name]
        again = evaluator.evaluate(_samples(out, f"tree/{name}@{m['w']:g}"), labels)
        for key in METRICS:
            assert again[key] == pytest.approx(m[key], abs=1e-5), (name, key)


@pytest.mark.e2e
def test_methods_share_seeds_and_labels(bench):
    """The unguided row is a direct `generate` from the run with the same seed and labels; a guided row is
    the same call on build_guided's denoiser: every method starts from the same noise."""
    out, metrics = bench
    run = load_run(out / "runs" / "tree" / "demo-expert")
    labels = class_labels(run.dataset.mixture, FAST.n_samples, seed=FAST.seed)
    assert torch.equal(torch.from_numpy(np.load(out / "samples.npz")["tree/labels"]), labels)
    sigmas = sigma_grid("karras", FAST.sampler_steps, run.process, sigma_max=FAST.sigma_max)
    common = dict(sigmas=sigmas, sampler="heun", seed=FAST.seed, cond=labels)
    x = generate(run.denoiser, FAST.n_samples, run.dataset.shape, **common)
    torch.testing.assert_close(x, _samples(out, "tree/none@heun"), atol=1e-5, rtol=0)
    evaluator = MixtureMetrics(run.dataset.mixture, n_reference=FAST.n_reference, seed=FAST.seed + 12345)
    unguided = metrics["datasets"]["tree"]["unguided"]["heun"]
    assert evaluator.evaluate(x, labels)["precision"] == pytest.approx(unguided["precision"], abs=1e-5)
    w = metrics["datasets"]["tree"]["methods"]["cfg"]["w"]
    guided = generate(build_guided(run, GuidanceSpec("cfg", w)), FAST.n_samples, run.dataset.shape, **common)
    torch.testing.assert_close(guided, _samples(out, f"tree/cfg@{w:g}"), atol=1e-5, rtol=0)


@pytest.mark.e2e
def test_bad_out_exits_2_with_one_line(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.md").write_text("mine")
    for out, words in (
        (a_file, "is a file"),
        (busy, "non-empty folder that `diffguide guidance-bench` did not write"),
    ):
        result = run_cli("guidance-bench", "--out", str(out), timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert (
            len(lines) == 1 and lines[0].startswith("diffguide guidance-bench: error:") and words in lines[0]
        )
    assert (busy / "notes.md").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == [
        "notes.md"
    ]


def test_a_previous_result_may_be_redone(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"benchmark": MARKER}))
    check_out(tmp_path)  # no error
    (tmp_path / "metrics.json").write_text(json.dumps({"none": {}}))  # e.g. a demo's metrics.json
    with pytest.raises(ConfigError, match="did not write"):
        check_out(tmp_path)


def test_a_new_method_joins_with_the_default_weights(monkeypatch):
    monkeypatch.setitem(METHODS, "brand-new", Method(METHODS["cfg"].build, frozenset(), "new", "new w={w:g}"))
    rows = {v.name: v for v in variants()}
    assert rows["brand-new"].weights == DEFAULT_WEIGHTS and rows["brand-new"].spec.kind == "brand-new"
    assert rows["classifier"].spec.classifier == "exact" and rows["cfg++"].sampler == "euler"
    assert [len(v.weights) <= 2 for v in variants(BenchSettings.fast().max_weights)] == [True] * len(rows)


def test_a_sweep_row_at_w_1_that_helped_is_reported_as_helped():
    """CFG++'s lambda = 1 and classifier guidance's scale 1 are not no guidance: the rule's choice counts
    as helped when it is a row of the sweep, whatever its w."""
    none = {"precision": 0.8, "coverage": 0.9, "mean_logp": 0.0, "sliced_w2": 0.1}
    rows = [{**none, "method": "cfg++", "w": w, "precision": p} for w, p in ((0.5, 0.85), (1.0, 0.9))]
    reported, rule = report_weight(rows, none, 0.05)
    assert reported["helped"] and reported["w"] == 1.0 and reported["precision"] == 0.9
