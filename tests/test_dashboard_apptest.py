"""Every dashboard page through Streamlit's AppTest, on tiny runs trained once per test session.

Runs used (see `train_source_runs`): `tiny` (2D tree mixture, class-conditional, 60 steps), its
`tiny-amateur` (same data and conditioning, smaller and shorter-trained: the autoguidance guide, named
in tiny/guidance.json as `diffguide train --with-amateur` does) and `tiny-uncond` (unconditional).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

pytest.importorskip("streamlit", reason="the dashboard needs Streamlit: run `make test` (installs it)")

from streamlit.testing.v1 import AppTest  # noqa: E402

from diffguide.dashboard import app_path  # noqa: E402
from diffguide.dashboard.jobs import JobRegistry, is_our_process  # noqa: E402
from diffguide.dashboard.safety import RunsFolder  # noqa: E402
from diffguide.dashboard.ui import ENV_RUNS  # noqa: E402

TIMEOUT = 120  # seconds per AppTest script run (the machine may be busy)


def train_source_runs(out: Path) -> None:
    """tiny, its amateur tiny-amateur and an unconditional tiny-uncond, trained with diffguide.train.train."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.guidance_runs import write_guidance_note
    from diffguide.train import train

    train(load_preset("tiny"), out / "tiny", progress=False)
    small = ["model.width=16", "train.steps=20", "train.ckpt_every=20", "train.log_every=5", "sample.n=100"]
    amateur = apply_overrides(load_preset("tiny"), small)
    amateur.name = "tiny-amateur"
    train(amateur, out / "tiny-amateur", progress=False)
    write_guidance_note(out / "tiny", amateur=out / "tiny-amateur")
    uncond = apply_overrides(load_preset("tiny"), [*small, "data.conditional=false", "train.steps=10"])
    uncond.name = "tiny-uncond"
    train(uncond, out / "tiny-uncond", progress=False)


def shared_runs(tmp_path_factory, name: str, build) -> Path:
    """A folder built once per session by `build(folder)`, shared by pytest-xdist workers (file lock)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / name
    with FileLock(str(base / f"{name}.lock")):
        if not (out / "done").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build(out)
            (out / "done").write_text("ok")
    return out


@pytest.fixture(scope="session")
def dashboard_source_runs(tmp_path_factory) -> Path:
    return shared_runs(tmp_path_factory, "dashboard-runs", train_source_runs)


def copy_runs(source: Path, dest: Path) -> Path:
    """A private copy of the source runs (tests write into their runs folder)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("done"))
    return dest


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


def test_empty_folder_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_RUNS, str(tmp_path / "none-yet"))
    for page in ("runs", "generate", "compare"):
        at = open_page(page)
        assert any("No runs in" in i.value and "--runs out/demo" in i.value for i in at.info), page


# ---------------------------------------------------------------------------------------------
# Generate


def test_generate_matches_the_library_and_guidance_identities(runs):
    from diffguide.runs import load_run
    from diffguide.sampling import generate, sigma_grid

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
    # autoguidance at w = 2 differs, and is guide + 2 (main - guide) of the two runs
    at.slider(key="gen-w").set_value(2.0).run()
    at.button(key="generate").click().run()
    assert_clean(at)
    assert "autoguidance w=2" in at.image[0].captions[0]
    assert not np.allclose(result_samples(at), page, atol=1e-3)


def test_generate_sampler_options_and_rescale_match_the_library(runs):
    from diffguide import guidance
    from diffguide.runs import load_run
    from diffguide.sampling import generate, sigma_grid

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


def test_generate_errors_are_readable(runs):
    # CFG on an unconditional run: a message saying why, no stack trace
    at = open_page("generate", run="tiny-uncond", guidance="cfg")
    at.button(key="generate").click().run()
    assert not at.exception
    assert any("unconditional" in e and "classifier-free guidance needs" in e for e in errors(at))
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
    at = open_page("compare", run="tiny")
    # guides: runs on the same data with the same conditioning (not the unconditional tiny-uncond), the
    # amateur named in guidance.json first, then the run's own earlier checkpoints
    assert at.selectbox(key="cmp-guide").options == [
        "tiny-amateur",
        "tiny@ckpt-00000030.safetensors",
        "(none)",
    ]
    at.number_input(key="cmp-n").set_value(400)
    at.number_input(key="cmp-steps-tiny").set_value(4).run()
    at.button(key="cmp-go").click().run()
    assert_clean(at)
    panels = at.session_state["cmp-result"]
    assert [p["title"] for p in panels] == ["no guidance", "CFG w=2", "autoguidance w=2"]
    assert all("precision" in p["note"] and "coverage" in p["note"] for p in panels)
    at.text_input(key="cmp-weights").set_value("1, 2.5").run()
    at.button(key="cmp-sweep").click().run()
    assert_clean(at)
    rows = at.session_state["cmp-sweep-result"]["rows"]
    assert [(r["guidance"], r["w"]) for r in rows] == [("CFG", 1.0), ("CFG", 2.5), ("autoguidance", 1.0),
                                                       ("autoguidance", 2.5)]  # fmt: skip
    # w = 1 is the unguided model for both methods: identical samples, identical metrics
    assert rows[0]["precision"] == rows[2]["precision"] and rows[0]["coverage"] == rows[2]["coverage"]
    assert all(0 <= r["precision"] <= 1 and 0 <= r["coverage"] <= 1 for r in rows)
    at.text_input(key="cmp-weights").set_value("1, two").run()
    at.button(key="cmp-sweep").click().run()
    assert not at.exception and any("'two' is not a number" in e for e in errors(at))


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
    from diffguide.runs import load_run

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
