"""Every dashboard page through Streamlit's AppTest, on tiny runs trained once per test session.

Runs used (see `train_source_runs` in tests/dashboard/conftest.py): `tiny` (2D tree mixture,
class-conditional, 60 steps), its `tiny-amateur` (same data and conditioning, smaller and shorter-trained:
the autoguidance guide, named in tiny/guidance.json as `diffguide train --with-amateur` does) and
`tiny-uncond` (unconditional).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit", reason="the dashboard needs Streamlit: run `make test` (installs it)")

from streamlit.testing.v1 import AppTest  # noqa: E402

from diffguide.dashboard import app_path  # noqa: E402
from diffguide.dashboard.jobs import JobRegistry, is_our_process  # noqa: E402
from diffguide.dashboard.safety import RunsFolder  # noqa: E402
from diffguide.dashboard.ui import ENV_RUNS  # noqa: E402
from tests.helpers import copy_runs, shared_runs

TIMEOUT = 120  # seconds per AppTest script run (the machine may be busy)


@pytest.fixture
def runs(dashboard_source_runs, tmp_path, monkeypatch) -> Path:
    folder = copy_runs(dashboard_source_runs, tmp_path / "runs")
    monkeypatch.setenv(ENV_RUNS, str(folder))
    return folder


def open_page(page: str, check: bool = True, **query) -> AppTest:
    """A new browser session on `page` with the URL's query parameters (e.g. run="tiny")."""
    at = AppTest.from_file(str(app_path()), default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run()
    if page != "runs":
        at.switch_page(f"views/{page}.py").run()
    if check:
        assert_clean(at)
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def assert_clean(at: AppTest) -> None:
    """No uncaught exception (a stack trace in the page) and no error message."""
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)


def result_samples(at: AppTest) -> np.ndarray:
    return np.load(io.BytesIO(at.session_state["gen-result"]["npz"]))["samples"]


# ---------------------------------------------------------------------------------------------
# Runs


def test_runs_page_lists_runs_with_loss_and_samples(runs):
    at = open_page("runs")
    table = at.dataframe[0].value
    assert sorted(table["run"]) == ["tiny", "tiny-amateur", "tiny-uncond"]
    row = table[table["run"] == "tiny"].iloc[0]
    assert (row["dataset"], row["preset"], row["steps"]) == ("tree", "tiny", "60 / 60")
    from diffguide.train.logs import read_metrics

    assert row["last loss"] == pytest.approx(read_metrics(runs / "tiny")[-1]["loss"], abs=1e-5)
    at.selectbox(key="run").set_value("tiny").run()
    assert_clean(at)
    assert len(at.image) == 1 and "tiny/samples.png" in at.image[0].captions[0]
    assert any(str(runs) in c.value and "tensorboard --logdir" in c.value for c in at.code)
    # the loss chart: one point per logged step of metrics.jsonl, on a log axis
    (chart,) = at.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    assert spec["mark"]["type"] == "line" and spec["encoding"]["y"]["scale"]["type"] == "log"
    (data,) = chart.proto.datasets
    assert data.name == spec["data"]["name"]
    import pyarrow as pa

    points = pa.ipc.open_stream(data.data.data).read_all().to_pydict()
    logged = [r for r in read_metrics(runs / "tiny") if "loss" in r]
    assert points["step"] == [r["step"] for r in logged] and len(logged) > 2
    np.testing.assert_allclose(points["loss"], [r["loss"] for r in logged])


def test_runs_page_starts_and_stops_tensorboard(runs):
    from diffguide.dashboard import tensorboard

    registry = JobRegistry(RunsFolder(runs))
    at = open_page("runs")
    at.button(key="tb-start").click().run()  # returns once TensorBoard answers
    assert_clean(at)
    try:
        (job,) = registry.running(("tensorboard",))
        (link,) = at.get("link_button")
        assert (
            link.proto.url == f"http://127.0.0.1:{job.extra['port']}/"
            and "Open TensorBoard" in link.proto.label
        )
        assert tensorboard.answers(link.proto.url)  # a real server answers HTTP there
        assert job.argv[-6:] == [
            "--logdir",
            str(runs),
            "--host",
            "127.0.0.1",
            "--port",
            str(job.extra["port"]),
        ]
        at = open_page("runs")  # a new session finds the running TensorBoard instead of starting another
        at.button(key="tb-stop").click().run()
        assert_clean(at)
        assert not is_our_process(job) and not tensorboard.answers(link.proto.url)
        assert at.button(key="tb-start") and not at.get("link_button")
    finally:
        for j in registry.running(None):
            os.kill(j.pid, 9)


def test_links_out_of_the_runs_folder_are_refused_in_the_pages(runs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("samples.png", "checkpoints"):
        shutil.move(runs / "tiny" / name, outside / name)
        (runs / "tiny" / name).symlink_to(outside / name)
    registry = JobRegistry(RunsFolder(runs))
    at = open_page("runs", check=False, run="tiny")
    assert not at.exception and not at.image  # the outside picture is not shown
    refused = f"it is a symlink to {str(outside / 'checkpoints')!r}, outside the runs folder {str(runs)!r}"
    assert any(e.startswith("refused 'tiny/") and "outside the runs folder" in e for e in errors(at))
    # TensorBoard would read every file below the folder: refused too, nothing started
    at.button(key="tb-start").click().run()
    assert any(e.startswith("TensorBoard: refused 'tiny/") for e in errors(at)) and not at.get("link_button")
    assert registry.jobs(None) == []
    at = open_page("generate", check=False, run="tiny")
    assert not at.exception and "generate" not in [b.key for b in at.button]
    assert any(e.startswith("refused 'tiny/") for e in errors(at)), errors(at)
    (runs / "tiny" / "samples.png").unlink()
    shutil.move(outside / "samples.png", runs / "tiny" / "samples.png")
    at = open_page("generate", check=False, run="tiny")
    assert any(e == f"refused 'tiny/checkpoints': {refused}; replace the link by the files themselves"
               for e in errors(at)), errors(at)  # fmt: skip


def test_empty_folder_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_RUNS, str(tmp_path / "none-yet"))
    for page in ("runs", "generate", "compare"):
        at = open_page(page)
        assert any("No runs in" in i.value and "--runs out/demo" in i.value for i in at.info), page


# ---------------------------------------------------------------------------------------------
# Generate


def test_generate_matches_the_library_and_guidance_identities(runs):
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    at = open_page("generate", run="tiny")
    at.selectbox(key="gen-sampler-tiny").set_value("euler")
    at.number_input(key="gen-steps-tiny").set_value(6)
    at.number_input(key="gen-seed").set_value(7)
    at.number_input(key="gen-n-2d").set_value(300)
    at.selectbox(key="gen-class").set_value("B").run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert (
        "no guidance" in at.image[0].captions[0] and at.download_button(key="dl-png").label == "Download PNG"
    )
    assert at.session_state["gen-result"]["png"][:8] == b"\x89PNG\r\n\x1a\n"
    page = result_samples(at)

    run = load_run(runs / "tiny")
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 6, run.process, s.sigma_min, s.sigma_max, s.rho)
    expected = generate(run.denoiser, 300, (2,), sigmas=sigmas, sampler="euler", seed=7, cond=1)
    np.testing.assert_allclose(page, expected.numpy(), rtol=1e-5, atol=1e-6)

    # w = 1 is no guidance, for CFG and autoguidance alike (same seeds, same samples)
    for kind, key in (("cfg", "gen-w"), ("auto", "gen-w")):
        at.selectbox(key="gen-guidance").set_value(kind).run()
        at.slider(key=key).set_value(1.0).run()
        at.button(key="generate").click().run()
        assert_clean(at)
        np.testing.assert_allclose(result_samples(at), page, rtol=1e-5, atol=1e-5)
    # autoguidance at w = 2 with the amateur (the first guide offered) is the library's
    # guide + 2 (main - guide) of the two runs, from the same seeds; and it differs from no guidance
    from diffguide import guidance

    assert at.selectbox(key="gen-guide").value == "tiny-amateur"
    at.slider(key="gen-w").set_value(2.0).run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert "autoguidance w=2" in at.image[0].captions[0]
    guided = guidance.autoguidance(run.denoiser, load_run(runs / "tiny-amateur").denoiser, 2.0)
    expected = generate(guided, 300, (2,), sigmas=sigmas, sampler="euler", seed=7, cond=1)
    np.testing.assert_allclose(result_samples(at), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(result_samples(at), page, atol=1e-3)


def test_generate_sampler_options_and_rescale_match_the_library(runs):
    from diffguide import guidance
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    run = load_run(runs / "tiny")
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 6, run.process, s.sigma_min, s.sigma_max, s.rho)
    at = open_page("generate", run="tiny")
    at.selectbox(key="gen-sampler-tiny").set_value("ddim").run()
    at.number_input(key="gen-steps-tiny").set_value(6)
    at.number_input(key="gen-seed").set_value(3)
    at.number_input(key="gen-n-2d").set_value(200)
    at.selectbox(key="gen-class").set_value("A")
    at.text_input(key="gen-options-tiny-ddim").set_value("eta=1").run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert "ddim 6 steps, eta=1, no guidance" in at.image[0].captions[0]
    expected = generate(
        run.denoiser, 200, (2,), sigmas=sigmas, sampler="ddim", seed=3, cond=0, sampler_kwargs={"eta": 1.0}
    )
    np.testing.assert_allclose(result_samples(at), expected.numpy(), rtol=1e-5, atol=1e-5)

    # CFG with rescale: the library's combinator with the same phi
    at.text_input(key="gen-options-tiny-ddim").set_value("")
    at.selectbox(key="gen-guidance").set_value("cfg").run()
    at.slider(key="gen-w").set_value(3.0)
    at.slider(key="gen-rescale").set_value(0.7).run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert "CFG w=3, rescale 0.7" in at.image[0].captions[0]
    guided = guidance.classifier_free_guidance(run.denoiser, 3.0, run.num_classes, rescale=0.7)
    expected = generate(guided, 200, (2,), sigmas=sigmas, sampler="ddim", seed=3, cond=0)
    np.testing.assert_allclose(result_samples(at), expected.numpy(), rtol=1e-5, atol=1e-5)

    # a bad option is a readable message naming the closest option, and nothing is generated
    at.text_input(key="gen-options-tiny-ddim").set_value("etaa=1").run()
    assert not at.exception
    assert any("unknown option 'etaa' for sampler 'ddim'; did you mean 'eta'?" in e for e in errors(at))


def test_generate_cfg_and_autoguidance_matches_the_library(runs):
    """CFG + autoguidance, which the page gained from the one guidance builder: its own weights and the
    guide select; the library's cfg_and_autoguidance from the same seeds."""
    from diffguide import guidance
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    at = open_page("generate", run="tiny", guidance="cfg+auto")
    at.selectbox(key="gen-sampler-tiny").set_value("euler")
    at.number_input(key="gen-steps-tiny").set_value(4)
    at.number_input(key="gen-n-2d").set_value(100)
    at.selectbox(key="gen-class").set_value("A")
    at.slider(key="gen-w").set_value(1.5)
    at.slider(key="gen-w-cfg").set_value(2.5).run()
    assert at.selectbox(key="gen-guide").value == "tiny-amateur"
    at.button(key="generate").click().run()
    assert_clean(at)
    assert "autoguidance w=1.5 + CFG w=2.5" in at.image[0].captions[0]
    run, amateur = load_run(runs / "tiny"), load_run(runs / "tiny-amateur")
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 4, run.process, s.sigma_min, s.sigma_max, s.rho)
    guided = guidance.cfg_and_autoguidance(run.denoiser, amateur.denoiser, 1.5, 2.5, run.num_classes)
    expected = generate(guided, 100, (2,), sigmas=sigmas, sampler="euler", seed=0, cond=0)
    np.testing.assert_allclose(result_samples(at), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_generate_classifier_guidance_and_interval(runs):
    at = open_page("generate", run="tiny", guidance="classifier")
    assert at.selectbox(key="gen-classifier").value.startswith("exact Bayes classifier")
    at.slider(key="gen-scale").set_value(2.0)
    at.checkbox(key="gen-use-interval").check().run()
    at.number_input(key="gen-n-2d").set_value(200).run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert "classifier scale 2, sigma in [0.3, 5]" in at.image[0].captions[0]
    assert np.isfinite(result_samples(at)).all()


def test_generate_on_a_grid_file_matches_the_library(runs):
    """The Sigma grid choice lists RUN/grids/*.json; a file's sigmas are sampled as the library samples
    them; another sampler warns; a file outside the run's noise range is the command line's message."""
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate
    from diffguide.samplers.grid_file import write_grid_file

    run = load_run(runs / "tiny")
    lo, hi = run.process.sigma_min, run.process.sigma_max
    sigmas = torch.tensor([hi, 6.0, 1.5, 0.3, lo, 0.0], dtype=torch.float64)
    grids = runs / "tiny" / "grids"
    write_grid_file(grids / "ipndm-nfe5.json", sigmas, sampler="ipndm", nfe=5)
    write_grid_file(grids / "wide.json", torch.tensor([2 * hi, 1.0, 0.0]), process="ve")
    at = open_page("generate", run="tiny")
    assert at.selectbox(key="gen-grid-tiny").options[1:] == ["ipndm-nfe5.json", "wide.json"]
    at.selectbox(key="gen-sampler-tiny").set_value("ipndm")
    at.number_input(key="gen-n-2d").set_value(200)
    at.selectbox(key="gen-class").set_value("A")
    at.selectbox(key="gen-grid-tiny").set_value("ipndm-nfe5.json").run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert not at.warning and "ipndm 5 steps on ipndm-nfe5.json" in at.image[0].captions[0]
    expected = generate(run.denoiser, 200, (2,), sigmas=sigmas, sampler="ipndm", seed=0, cond=0)
    np.testing.assert_allclose(result_samples(at), expected.numpy(), rtol=1e-5, atol=1e-5)
    # another sampler on the file: sampled, with the warning the command line gives
    at.selectbox(key="gen-sampler-tiny").set_value("heun").run()
    assert any(
        "tuned for sampler 'ipndm' (5 evaluations), used with 'heun' (9 " in w.value for w in at.warning
    )
    # a file outside the run's range: refused with one readable line, no stack trace
    at.selectbox(key="gen-grid-tiny").set_value("wide.json").run()
    assert not at.exception
    assert any(
        f"outside the model's noise process (edm)'s range {lo:g}..{hi:g}: it was tuned for process 've'" in e
        for e in errors(at)
    ), errors(at)


def test_generate_errors_are_readable(runs):
    # CFG on an unconditional run: a message saying why, no stack trace
    at = open_page("generate", run="tiny-uncond", guidance="cfg")
    at.button(key="generate").click().run()
    assert not at.exception
    # the guidance builder's message, the same as the command line's (with the page's names)
    assert any(
        "guidance cfg needs a class-conditional run" in e and "'tiny-uncond' is unconditional" in e
        for e in errors(at)
    ), errors(at)
    # a run that has no checkpoint yet
    (runs / "half").mkdir()
    shutil.copy(runs / "tiny" / "config.json", runs / "half" / "config.json")
    at = open_page("generate", check=False, run="half")
    assert not at.exception
    assert any("has no checkpoint yet" in e for e in errors(at))
    # a checkpoint that does not fit its config
    shutil.copytree(runs / "tiny-amateur", runs / "broken")
    cfg = (runs / "broken" / "config.json").read_text().replace('"conditional": true', '"conditional": false')
    (runs / "broken" / "config.json").write_text(cfg)
    at = open_page("generate", check=False, run="broken")
    assert not at.exception
    assert any("checkpoint does not fit this architecture" in e for e in errors(at)), errors(at)


@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "tiny/../../../root"])
def test_path_traversal_through_the_url_is_refused(runs, bad):
    for page in ("generate", "runs", "compare"):
        at = open_page(page, check=False, run=bad)
        assert not at.exception
        assert any(e.startswith(f"refused run name {bad!r}") for e in errors(at)), (page, errors(at))


# ---------------------------------------------------------------------------------------------
# Compare


def test_compare_side_by_side_and_sweep(runs):
    from diffguide.guidance.spec import METHODS, GuidanceSpec, build_guided

    at = open_page("compare", run="tiny")
    # guides: runs on the same data with the same conditioning (not the unconditional tiny-uncond), the
    # amateur named in guidance.json first, then the run's own earlier checkpoints
    assert at.selectbox(key="cmp-guide").options == [
        "tiny-amateur",
        "tiny@ckpt-00000030.safetensors",
        "(none)",
    ]
    # the methods: those of the registry that apply to the run, CFG and autoguidance preselected; the
    # others listed with the builder's reason (tiny is an MLP: no self-attention; heun: no CFG++)
    methods = at.multiselect(key="cmp-methods")
    assert methods.value == ["cfg", "auto"]
    (expander,) = at.expander
    unavailable = expander.markdown[0].value
    assert (
        "**Perturbed-attention guidance" in unavailable
        and "run 'tiny' has none (model.arch='mlp')" in unavailable
    )
    assert "not for sampler 'heun'" in unavailable and "slg" not in expander.label
    assert len(methods.options) + int(expander.label.split("(")[1][:-1]) == len(METHODS) - 1
    at.number_input(key="cmp-n").set_value(400)
    at.number_input(key="cmp-steps-tiny").set_value(4).run()
    at.button(key="cmp-go").click().run()
    assert_clean(at)
    panels = at.session_state["cmp-result"]
    assert [p["title"] for p in panels] == ["no guidance", "CFG w=2", "autoguidance w=2"]
    assert all("precision" in p["note"] and "coverage" in p["note"] for p in panels)
    # the autoguidance panel scores the library's guided samples from the same seeds (class "all classes")
    from diffguide import guidance
    from diffguide.metrics.points import MixtureMetrics, class_labels
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    run, amateur = load_run(runs / "tiny"), load_run(runs / "tiny-amateur")
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 4, run.process, s.sigma_min, s.sigma_max, s.rho)
    labels = class_labels(run.dataset.mixture, 400)
    metrics = MixtureMetrics(run.dataset.mixture, n_reference=10_000)

    def library_metrics(w: float, guided=None) -> dict:
        guided = guided or guidance.autoguidance(run.denoiser, amateur.denoiser, w)
        x = generate(guided, 400, (2,), sigmas=sigmas, sampler=s.sampler, seed=0, cond=labels)
        return metrics.evaluate(x, labels)

    m = library_metrics(2.0)
    assert panels[2]["note"] == f"precision {m['precision']:.3f} · coverage {m['coverage']:.3f}"
    at.text_input(key="cmp-weights").set_value("1, 2.5").run()
    at.button(key="cmp-sweep").click().run()
    assert_clean(at)
    rows = at.session_state["cmp-sweep-result"]["rows"]
    assert [(r["guidance"], r["w"]) for r in rows] == [("CFG", 1.0), ("CFG", 2.5), ("autoguidance", 1.0),
                                                       ("autoguidance", 2.5)]  # fmt: skip
    # w = 1 is the unguided model for both methods: identical samples, identical metrics
    assert rows[0]["precision"] == rows[2]["precision"] and rows[0]["coverage"] == rows[2]["coverage"]
    assert all(0 <= r["precision"] <= 1 and 0 <= r["coverage"] <= 1 for r in rows)
    m = library_metrics(2.5)
    assert rows[3]["precision"] == pytest.approx(m["precision"]) and rows[3]["coverage"] == pytest.approx(
        m["coverage"]
    )
    at.text_input(key="cmp-weights").set_value("1, two").run()
    at.button(key="cmp-sweep").click().run()
    assert not at.exception and any("'two' is not a number" in e for e in errors(at))
    # any method that applies, each with its weight and its own options: SLG beside CFG, without the
    # guide (autoguidance then moves to the list of those that do not apply)
    at.selectbox(key="cmp-guide").set_value("(none)").run()
    assert at.multiselect(key="cmp-methods").value == ["cfg"]
    assert (
        "**Autoguidance (a weaker run as guide)**: guidance auto needs a guide run"
        in at.expander[0].markdown[0].value
    )
    at.multiselect(key="cmp-methods").select("slg").run()
    at.slider(key="cmp-w-slg").set_value(3.0)
    at.text_input(key="cmp-slg-skip_layer_guidance_layers").set_value("blocks.0").run()
    at.button(key="cmp-go").click().run()
    assert_clean(at)
    panels = at.session_state["cmp-result"]
    assert [p["title"] for p in panels] == [
        "no guidance",
        "CFG w=2",
        "SLG w=3, skip_layer_guidance_layers=blocks.0",
    ]
    spec = GuidanceSpec("slg", 3.0, options={"skip_layer_guidance_layers": "blocks.0"})
    m = library_metrics(3.0, build_guided(run, spec))  # the command line's builder, the same seeds
    assert panels[2]["note"] == f"precision {m['precision']:.3f} · coverage {m['coverage']:.3f}"
    at.text_input(key="cmp-weights").set_value("1, 3").run()
    at.button(key="cmp-sweep").click().run()
    assert_clean(at)
    rows = at.session_state["cmp-sweep-result"]["rows"]
    assert [(r["guidance"], r["w"]) for r in rows] == [("CFG", 1.0), ("CFG", 3.0), ("SLG", 1.0), ("SLG", 3.0)]
    assert rows[3]["precision"] == pytest.approx(m["precision"]) and rows[3]["coverage"] == pytest.approx(
        m["coverage"]
    )


def train_digits(out: Path) -> None:
    """A 2-step class-conditional digits run (checkpoints at steps 1 and 2) and a tiny feature classifier."""
    from diffguide.classifiers.images import train_classifier
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train

    sets = ["train.steps=2", "model.channels=8", "train.batch_size=16", "train.ckpt_every=1",
            "train.keep_last=2", "sample.steps=3", "sample.n=4", "train.log_every=1"]  # fmt: skip
    cfg = apply_overrides(load_preset("digits-cfg"), sets)
    train(cfg, out / "digits", progress=False)
    train_classifier(
        cfg.data, out / "classifier-digits", steps=20, batch_size=32, width=8, feature_dim=16, log=None
    )


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory) -> Path:
    return shared_runs(tmp_path_factory, "dashboard-digits", train_digits)


def test_generate_clip_option_for_image_runs(digits_runs, runs, tmp_path, monkeypatch):
    """Image runs offer "Clip x0 estimates to [-1, 1]" (2D runs, whose range is not known, do not): the
    caption says so, and the page's denoiser is the guided one clamped elementwise (checked with a
    narrow range, which the untrained net's guided estimates leave)."""
    from diffguide.dashboard.generation import guided_denoiser
    from diffguide.guidance.spec import GuidanceSpec
    from diffguide.models.runs import load_run

    assert "gen-clip" not in [c.key for c in open_page("generate", run="tiny").checkbox]
    folder = copy_runs(digits_runs, tmp_path / "digits-runs")
    monkeypatch.setenv(ENV_RUNS, str(folder))
    at = open_page("generate", run="digits")
    at.number_input(key="gen-n-img").set_value(4)
    at.selectbox(key="gen-sampler-digits").set_value("euler")
    at.number_input(key="gen-steps-digits").set_value(3)
    at.selectbox(key="gen-guidance").set_value("cfg").run()
    at.checkbox(key="gen-clip").check().run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert "CFG w=2, x0 clipped to [-1, 1]" in at.image[0].captions[0]

    run = load_run(folder / "digits")
    x = torch.randn(3, *run.dataset.shape, generator=torch.Generator().manual_seed(0)) * 5
    cond = torch.tensor([1, 2, 3])
    free = guided_denoiser(run, GuidanceSpec("cfg", 4.0))(x, 5.0, cond)
    clipped = guided_denoiser(run, GuidanceSpec("cfg", 4.0, clip=(-0.01, 0.01)))(x, 5.0, cond)
    assert bool((free.abs() > 0.01).any())
    assert torch.equal(clipped, free.clamp(-0.01, 0.01))


def test_compare_image_run_side_by_side_and_sweep(digits_runs, tmp_path, monkeypatch):
    from diffguide import guidance
    from diffguide.classifiers.images import load_classifier
    from diffguide.guidance.spec import GuidanceSpec, build_guided
    from diffguide.metrics.images import conditional_accuracy, feature_metrics
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import generate, sigma_grid

    folder = copy_runs(digits_runs, tmp_path / "runs")
    monkeypatch.setenv(ENV_RUNS, str(folder))
    at = open_page("compare", run="digits")
    # the guide: the run's own earlier checkpoint (no other digits run here)
    assert at.selectbox(key="cmp-guide").options == ["digits@ckpt-00000001.safetensors", "(none)"]
    at.number_input(key="cmp-n").set_value(8)
    at.selectbox(key="cmp-sampler-digits").set_value("euler")
    at.number_input(key="cmp-steps-digits").set_value(3).run()
    at.button(key="cmp-go").click().run()
    assert_clean(at)
    panels = at.session_state["cmp-result"]
    assert [p["title"] for p in panels] == ["no guidance", "CFG w=2", "autoguidance w=2"]
    assert all("accuracy" in p["note"] and "fid_digits_clf" in p["note"] for p in panels)
    assert len(at.image) == 3
    at.text_input(key="cmp-weights").set_value("1, 3").run()
    at.button(key="cmp-sweep").click().run()
    assert_clean(at)
    result = at.session_state["cmp-sweep-result"]
    rows = result["rows"]
    assert [(r["guidance"], r["w"]) for r in rows] == [("CFG", 1.0), ("CFG", 3.0), ("autoguidance", 1.0),
                                                       ("autoguidance", 3.0)]  # fmt: skip
    assert result["png"][:8] == b"\x89PNG\r\n\x1a\n"
    # w = 1 is the unguided model for both: the same samples, the same scores
    assert (
        rows[0]["accuracy"] == rows[2]["accuracy"] and rows[0]["fid_digits_clf"] == rows[2]["fid_digits_clf"]
    )
    # CFG at w = 3: the library's guided samples from the same seeds (all classes: 0, 1, ..., 7), scored by
    # the classifier's accuracy on the requested classes and its feature FID against held-out images
    run = load_run(folder / "digits")
    classifier, _ = load_classifier(folder / "classifier-digits")
    s = run.config.sample
    sigmas = sigma_grid(s.grid, 3, run.process, s.sigma_min, s.sigma_max, s.rho)
    labels = torch.arange(8) % run.num_classes
    guided = guidance.classifier_free_guidance(run.denoiser, 3.0, run.num_classes)
    x = generate(guided, 8, run.dataset.shape, sigmas=sigmas, sampler="euler", seed=0, cond=labels)
    features, pred = classifier.predict(x)
    real_features = classifier.predict(run.dataset.heldout(2000)[0])[0].numpy()
    expected = feature_metrics(real_features, features.numpy(), "digits_clf")
    assert rows[1]["fid_digits_clf"] == pytest.approx(expected["fid_digits_clf"], rel=1e-6)
    assert rows[1]["accuracy"] == conditional_accuracy(pred, labels)["accuracy"]
    # the digits U-Net has self-attention in its mid block and residual blocks: PAG, SEG and SLG apply;
    # classifier guidance (2D runs only) is listed with why; the SLG panel scores the builder's samples
    methods = at.multiselect(key="cmp-methods")
    for title in ("Perturbed-attention", "Smoothed-energy", "Skip-layer guidance"):
        assert any(o.startswith(title) for o in methods.options), title
    assert (
        "**Classifier guidance**: guidance classifier needs a classifier" in at.expander[0].markdown[0].value
    )
    methods.set_value(["slg"]).run()
    at.button(key="cmp-go").click().run()
    assert_clean(at)
    panels = at.session_state["cmp-result"]
    assert [p["title"] for p in panels] == ["no guidance", "SLG w=2"] and all("png" in p for p in panels)
    guided = build_guided(run, GuidanceSpec("slg", 2.0))
    x = generate(guided, 8, run.dataset.shape, sigmas=sigmas, sampler="euler", seed=0, cond=labels)
    expected = conditional_accuracy(classifier.predict(x)[1], labels)["accuracy"]
    assert panels[1]["note"].startswith(f"accuracy {expected:.3f} · fid_digits_clf ")


# ---------------------------------------------------------------------------------------------
# Train


def wait_for(predicate, timeout: float = 90, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.e2e  # two real training processes, launched, stopped and resumed
def test_train_launch_stop_resume(runs):
    from diffguide.dashboard.catalog import progress
    from diffguide.train.checkpoint import list_checkpoints

    folder = RunsFolder(runs)
    registry = JobRegistry(folder)
    at = open_page("train", preset="tiny")
    assert at.selectbox(key="preset").value == "tiny"
    at.text_input(key="name-tiny").set_value("../evil").run()
    at.button(key="launch").click().run()
    assert not at.exception and any("refused run name '../evil'" in e for e in errors(at))
    assert not (runs.parent / "evil").exists() and registry.jobs() == []

    at.text_input(key="name-tiny").set_value("live").run()
    at.number_input(key="steps-tiny").set_value(1_000_000)
    at.number_input(key="width-tiny").set_value(16).run()
    assert any("--set train.steps=1000000 --set model.width=16" in c.value for c in at.code)
    at.button(key="launch").click().run()
    assert_clean(at)
    job = registry.jobs()[0]
    try:
        assert job.run == "live" and is_our_process(job)
        wait_for(lambda: progress(runs / "live")["step"] > 0, what="the first logged step")
        at.run()
        assert any("running" in m.value for m in at.markdown)
        at.button(key=f"stop-{job.id}").click().run()
        assert_clean(at)
        wait_for(lambda: not is_our_process(job), what="the process to stop")
        assert registry.status(job) == "stopped"
        log = registry.log_tail(job)
        step = int(log.split("stopped at step ")[1].split()[0])
        assert list_checkpoints(runs / "live" / "checkpoints")[-1].name == f"ckpt-{step:08d}.safetensors"

        at.run()
        assert any("stopped" in m.value for m in at.markdown)
        at.button(key=f"resume-{job.id}").click().run()
        assert_clean(at)
        resumed = registry.jobs()[0]
        assert resumed.action == "resume" and "--resume" in resumed.argv
        wait_for(lambda: progress(runs / "live")["step"] > step, what="the resumed run to log a step")
        registry.stop(resumed.id)
        wait_for(lambda: not is_our_process(resumed), what="the resumed process to stop")
        assert "resuming" in registry.log_tail(resumed, 40) and registry.status(resumed) == "stopped"
    finally:
        for j in registry.running():
            os.kill(j.pid, 9)


# ---------------------------------------------------------------------------------------------
# Image runs (CryptoPunks: type + accessories)


def train_punks(out: Path) -> None:
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train

    sets = ["train.steps=2", "model.channels=8", "train.batch_size=8", "train.ckpt_every=2", "sample.steps=3",
            "sample.n=4", "train.log_every=1"]  # fmt: skip
    train(apply_overrides(load_preset("punks-cfg"), sets), out / "punks", progress=False)


@pytest.fixture(scope="session")
def punks_runs(tmp_path_factory) -> Path:
    from diffguide.errors import DataError

    try:
        from diffguide.data.punks import package_data_dir

        package_data_dir()
    except (DataError, ImportError) as e:
        pytest.skip(f"CryptoPunks data not installed: {e}")
    return shared_runs(tmp_path_factory, "dashboard-punks", train_punks)


def test_punks_type_accessories_random_and_grid(punks_runs, tmp_path, monkeypatch):
    from diffguide.dashboard.generation import attribute_spec
    from diffguide.models.runs import load_run

    folder = copy_runs(punks_runs, tmp_path / "runs")
    monkeypatch.setenv(ENV_RUNS, str(folder))
    at = open_page("generate", run="punks")
    spec = attribute_spec(load_run(folder / "punks"))
    for _ in range(3):  # Random picks a combination that occurs in the training data
        at.button(key="gen-random").click().run()
        kind = at.selectbox(key="gen-type").value
        accessories = at.multiselect(key="gen-accessories").value
        acc = np.zeros(len(spec.accessories))
        acc[[spec.accessories.index(a) for a in accessories]] = 1
        assert spec.count_matches(spec.types.index(kind), acc) > 0
    assert not at.warning
    at.number_input(key="gen-n-img").set_value(4)
    at.checkbox(key="gen-progression").check()
    at.selectbox(key="gen-guidance").set_value("cfg").run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert f"CFG w=2, {kind}" in at.image[0].captions[0]
    assert "denoiser's estimate" in at.image[1].captions[0]
    assert at.download_button(key="dl-png").label == "Download PNG"
    from PIL import Image

    grid = Image.open(io.BytesIO(at.session_state["gen-result"]["png"]))
    assert grid.mode == "RGB" and grid.width > 24
    # a combination no training image has is generated with a warning, not an error
    at.selectbox(key="gen-type").set_value("alien")
    at.multiselect(key="gen-accessories").set_value(["pigtails", "front beard"]).run()
    assert not at.exception and any("never saw this combination" in w.value for w in at.warning)


def test_random_combination_occurs_in_data():
    from diffguide.dashboard.generation import random_combination
    from diffguide.data.attributes import AttributeSpec

    types = np.array([0, 1, 1])
    acc = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    spec = AttributeSpec(["a", "b"], ["x", "y", "z"], types, acc)
    seen = set()
    for seed in range(40):
        kind, names = random_combination(spec, seed)
        seen.add((kind, tuple(names)))
    assert seen == {("a", ("x",)), ("b", ("y", "z")), ("b", ())}
    assert torch.is_tensor(spec.condition(2, "b", ["y"])["type"])
