"""A tiny digits run through the CLI: train, sample (grid, per-sample, GIF, inpainting), train-classifier, eval."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import torch

from diffguide.cli import main
from diffguide.cli.condition_args import build_condition
from diffguide.data.attributes import AttributeSpec
from diffguide.errors import ConfigError

TINY = [
    "model.channels=8",
    "model.emb_dim=16",
    "train.steps=4",
    "train.batch_size=16",
    "train.warmup_steps=1",
    "train.log_every=2",
    "train.ckpt_every=4",
    "sample.steps=3",
    "sample.n=20",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, worker_id):
    """One tiny digits-cfg run per test session, shared by the xdist workers (built under a file lock)."""
    import os

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "images-cli"
    os.environ["DIFFGUIDE_CACHE"] = str(root / "cache")
    with FileLock(str(root) + ".lock"):
        if not (root / "tiny" / "samples.png").is_file():
            args = ["train", "--preset", "digits-cfg", "--out", str(root), "--name", "tiny", "--no-progress"]
            for s in TINY:
                args += ["--set", s]
            assert main(args) == 0
    assert (root / "tiny" / "samples.png").is_file()
    return root


def test_sample_outputs(tiny_run, capsys):
    from PIL import Image

    out = tiny_run / "s" / "sevens.png"
    args = [
        "sample",
        str(tiny_run / "tiny"),
        "--n",
        "6",
        "--class",
        "7",
        "--out",
        str(out),
        "--per-sample",
        "--gif",
    ]
    assert main(args) == 0
    assert Image.open(out).size[0] > 8
    assert sorted(p.name for p in (tiny_run / "s" / "sevens").iterdir())[:2] == ["00000.png", "00001.png"]
    assert Image.open(tiny_run / "s" / "sevens" / "00000.png").size == (8, 8)
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames >= 3
    assert main(["sample", str(tiny_run / "tiny"), "--n", "2", "--class", "12", "--out", str(out)]) == 2
    assert "--class must be in 0..9" in capsys.readouterr().err
    assert main(["sample", str(tiny_run / "tiny"), "--n", "2", "--type", "ape", "--out", str(out)]) == 2
    assert "not conditioned on attributes" in capsys.readouterr().err


def test_sample_inpaint_keeps_known_pixels(tiny_run):
    from PIL import Image

    known = np.zeros((8, 8), np.uint8)
    known[:, :4] = np.arange(32, dtype=np.uint8).reshape(8, 4) * 8
    Image.fromarray(known).save(tiny_run / "known.png")
    out = tiny_run / "inpaint.png"
    args = ["sample", str(tiny_run / "tiny"), "--n", "3", "--class", "1", "--out", str(out), "--per-sample"]
    assert main(args + ["--inpaint", str(tiny_run / "known.png"), "--mask", "left"]) == 0
    for i in range(3):
        got = np.asarray(Image.open(tiny_run / "inpaint" / f"{i:05d}.png"))
        assert np.array_equal(got[:, :4], known[:, :4])
    assert main(args + ["--inpaint", str(tiny_run / "known.png")]) == 2


@pytest.fixture(scope="module")
def tiny_classifier(tiny_run):
    """A digits classifier trained for 60 steps (held-out accuracy ~0.7), shared like tiny_run."""
    from filelock import FileLock

    clf = tiny_run / "clf"
    with FileLock(str(clf) + ".lock"):
        if not (clf / "classifier.json").is_file():
            args = [
                "train-classifier",
                "--data",
                "digits",
                "--out",
                str(clf),
                "--steps",
                "60",
                "--width",
                "8",
            ]
            assert main(args) == 0
    return clf


def eval_args(tiny_run, tiny_classifier, out) -> list[str]:
    """`diffguide eval` of the tiny run with the tiny classifier, 40 samples, to `out`."""
    return [
        "eval",
        str(tiny_run / "tiny"),
        "--classifier",
        str(tiny_classifier),
        "--n",
        "40",
        "--out",
        str(out),
    ]


def test_train_classifier_and_eval(tiny_run, tiny_classifier):
    record = json.loads((tiny_classifier / "classifier.json").read_text())
    assert record["kind"] == "images" and "class_accuracy" in record["training"]["heldout"]
    out = tiny_run / "eval.json"
    args = eval_args(tiny_run, tiny_classifier, out)
    guidance = ["--guidance", "cfg", "--w", "1.5", "--rescale", "0.5", "--interval", "0.1", "5"]
    assert main(args + guidance) == 0
    result = json.loads(out.read_text())
    for key in ("fid_digits_clf", "kid_digits_clf", "precision_digits_clf", "recall_digits_clf", "accuracy"):
        assert key in result
    assert 0 <= result["accuracy"] <= 1 and result["n"] == 40 and result["n_real"] == 300
    assert result["guidance"] == {
        "guidance": "cfg", "w": 1.5, "w_cfg": None, "guide": None, "interval": [0.1, 5.0], "rescale": 0.5
    }  # fmt: skip


def test_eval_with_a_2d_classifier_exits_2_naming_the_file_and_kinds(tiny_run, tmp_path):
    """`eval RUN --classifier DIR` given a noise-conditional classifier of 2D points, through the real
    entry point: exit 2, one line on stderr naming the file, its kind and the expected kind, no
    traceback, and no file in the run or classifier folder changed or added."""
    import shutil

    from diffguide.classifiers.points import ClassifierConfig, train_classifier
    from diffguide.config import load_preset
    from tests.helpers import run_cli

    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run / "tiny", run)
    clf = train_classifier(
        load_preset("tiny"),
        tmp_path / "runs" / "clf2d",
        ClassifierConfig(width=8, depth=1, steps=2, batch_size=16),
    )

    def files():
        return {p: p.read_bytes() for p in sorted((tmp_path / "runs").rglob("*")) if p.is_file()}

    before = files()
    result = run_cli("eval", str(run), "--classifier", str(clf), "--n", "4")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"diffguide eval: error: {str(clf / 'classifier.json')!r} is a ")
    assert "(kind 'points')" in result.stderr and "(kind 'images') is expected" in result.stderr
    assert files() == before


def test_eval_metrics_of_an_oracle_that_serves_held_out_images(tiny_run, tiny_classifier):
    """A generator returning held-out digits of the requested class: precision 1, FID/KID at their floor
    (below an independent real set's), accuracy = the classifier's accuracy on those very images."""
    from diffguide.classifiers.images import load_classifier
    from diffguide.metrics.images import evaluate_images, fid, kid, precision_recall
    from diffguide.models.runs import load_run

    run = load_run(tiny_run / "tiny")
    real, labels = run.dataset.heldout()
    pools = {c: torch.nonzero(labels == c).reshape(-1).tolist() for c in range(10)}
    served = []  # held-out indices, in the order the samples were produced

    def oracle(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **kwargs):
        for c in cond.tolist():  # the next unused held-out image of each requested class, cycling
            pool = pools[c]
            served.append(pool[sum(labels[i] == c for i in served) % len(pool)])
        return real[served[-len(x) :]].to(x)

    n = 300
    result, x = evaluate_images(run, run.denoiser, tiny_classifier, n=n, sampler=oracle, batch_size=128)
    assert torch.equal(x, real[served])
    assert labels[served].tolist() == [i % 10 for i in range(n)]  # eval asked for classes 0..9 in turn
    classifier, _ = load_classifier(tiny_classifier)
    real_f, _ = classifier.predict(real)
    fake_f, pred = classifier.predict(real[served])
    accuracy = float((pred["class"] == labels[served]).float().mean())
    assert 0.3 < accuracy < 1  # a classifier that is neither at chance nor perfect: the check can tell
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert result["precision_digits_clf"] == 1.0  # every sample is a real image, inside its own k-NN ball
    _, recall = precision_recall(real_f.numpy(), fake_f.numpy())
    assert result["recall_digits_clf"] == pytest.approx(recall)
    # the floor: an independent set of real (training) digits of the same size
    train, _ = run.dataset.train_images()
    train_f, _ = classifier.predict(train[:n])
    floor_fid = fid(real_f.numpy(), train_f.numpy())
    assert result["fid_digits_clf"] == pytest.approx(fid(real_f.numpy(), fake_f.numpy()), rel=1e-6)
    assert result["fid_digits_clf"] < 0.5 * floor_fid, (result["fid_digits_clf"], floor_fid)
    # KID is unbiased, so its floor is 0 up to noise: tiny next to what noise images score
    assert result["kid_digits_clf"] == pytest.approx(kid(real_f.numpy(), fake_f.numpy()), rel=1e-6)
    noise_f, _ = classifier.predict(
        torch.rand(n, *run.dataset.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )
    scale = kid(real_f.numpy(), noise_f.numpy())
    assert abs(result["kid_digits_clf"]) < 0.02 * scale, (result["kid_digits_clf"], scale)


def test_eval_inception_says_what_is_missing_before_sampling(tiny_run, tiny_classifier, monkeypatch, capsys):
    import importlib.util

    import diffguide.samplers.generation
    from diffguide.metrics.images import INCEPTION_WEIGHTS

    def no_sampling(*args, **kwargs):
        raise AssertionError("eval sampled before checking the --inception prerequisites")

    monkeypatch.setattr(diffguide.samplers.generation, "generate", no_sampling)
    torch_home = tiny_run / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    out = tiny_run / "eval-inception.json"
    args = eval_args(tiny_run, tiny_classifier, out)
    assert main(args + ["--inception"]) == 2
    err = capsys.readouterr().err
    weights = torch_home / "hub" / "checkpoints" / INCEPTION_WEIGHTS
    assert f"{INCEPTION_WEIGHTS} at {weights}" in err and "nothing is downloaded" in err
    for module, package in (("torch_fidelity", "torch-fidelity"), ("torchvision", "torchvision")):
        assert (f"the package {package} " in err) == (importlib.util.find_spec(module) is None)
    assert not out.exists()
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"")  # present now: no longer named as missing
    assert main(args + ["--inception"]) == (2 if importlib.util.find_spec("torch_fidelity") is None else 0)
    assert str(weights) not in capsys.readouterr().err


def test_eval_keeps_the_metrics_when_inception_fid_fails(tiny_run, tiny_classifier, monkeypatch, capsys):
    import diffguide.metrics.images as M

    def broken(real, fake):
        raise RuntimeError("feature extractor crashed")

    monkeypatch.setattr(M, "check_inception", lambda: None)  # as if everything were installed
    monkeypatch.setattr(M, "inception_fid", broken)
    out = tiny_run / "eval-inception-failed.json"
    args = [
        "eval",
        str(tiny_run / "tiny"),
        "--classifier",
        str(tiny_classifier),
        "--n",
        "20",
        "--out",
        str(out),
    ]
    assert main(args + ["--inception"]) == 0
    result = json.loads(out.read_text())
    assert "fid_digits_clf" in result and "accuracy" in result and "fid_inception" not in result
    assert result["fid_inception_error"] == "RuntimeError: feature extractor crashed"
    assert "Inception FID failed, the other metrics are kept" in capsys.readouterr().err


AUTO_TINY = [
    "train.steps=5",
    "train.batch_size=16",
    "train.warmup_steps=1",
    "train.log_every=5",
    "train.ckpt_every=5",
    "sample.steps=3",
    "sample.n=10",
]


@pytest.fixture(scope="module")
def auto_pair(tiny_run):
    """digits-auto with its amateur, as docs/images.md trains it (5 steps instead of 1500), shared like tiny_run."""
    from filelock import FileLock

    root = tiny_run / "auto"
    with FileLock(str(root) + ".lock"):
        if not (root / "digits-auto" / "guidance.json").is_file():
            args = ["train", "--preset", "digits-auto", "--out", str(root), "--no-progress"]
            args += ["--with-amateur", "--amateur-width", "8", "--amateur-steps", "3"]
            assert main(args + [a for s in AUTO_TINY for a in ("--set", s)]) == 0
    return root


def test_digits_auto_samples_with_its_amateur_without_guide(auto_pair):
    from PIL import Image

    expert, amateur = auto_pair / "digits-auto", auto_pair / "digits-auto-amateur"
    note = json.loads((expert / "guidance.json").read_text())
    assert (expert / note["amateur"]).resolve() == amateur.resolve()
    assert json.loads((amateur / "config.json").read_text())["train"]["steps"] == 3
    images = {}
    for kind in ("auto", "none"):
        out = auto_pair / f"{kind}.png"
        weight = ["--w", "2"] if kind == "auto" else []  # --w with guidance none is refused (ignored)
        args = ["sample", str(expert), "--guidance", kind, *weight, "--class", "3", "--n", "4"]
        assert main(args + ["--out", str(out), "--per-sample"]) == 0
        images[kind] = np.stack(
            [np.asarray(Image.open(out.with_suffix("") / f"{i:05d}.png")) for i in range(4)]
        )
    assert not np.array_equal(images["auto"], images["none"])  # the amateur named in guidance.json guided


def test_digits_auto_amateur_has_the_requested_width(auto_pair):
    config = json.loads((auto_pair / "digits-auto-amateur" / "config.json").read_text())
    assert config["model"]["channels"] == 8


def test_unet_amateur_defaults_to_half_the_channels():
    """A U-Net's width is model.channels (kept even); an MLP's is model.width."""
    from diffguide.config import ConfigError, load_preset
    from diffguide.guidance.pairing import amateur_config

    expert = load_preset("digits-auto")
    amateur = amateur_config(expert)
    assert amateur.model.channels == expert.model.channels // 2 and amateur.model.width == expert.model.width
    assert amateur.train.steps == expert.train.steps // 2
    with pytest.raises(ConfigError, match="model.channels must be even"):
        amateur_config(expert, width=7)


def test_attribute_condition_names_checked(capsys):
    spec = AttributeSpec(
        types=["alien", "ape", "female"],
        accessories=["earring", "blonde bob", "pipe"],
        type_labels=np.array([0, 1, 2, 2]),
        accessory_labels=np.array([[1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0]]),
    )
    run = types.SimpleNamespace(
        dataset=types.SimpleNamespace(attributes=spec, kind="images"),
        num_classes=3,
        config=types.SimpleNamespace(name="p"),
    )
    args = types.SimpleNamespace(class_label=None, attr_type="female", accessory=["earring", "blonde bob"])
    cond = build_condition(args, run, 4)
    assert cond["type"].tolist() == [2] * 4 and cond["accessories"][0].tolist() == [1, 1, 0]
    only_acc = build_condition(
        types.SimpleNamespace(class_label=None, attr_type=None, accessory=["pipe"]), run, 2
    )
    assert only_acc["type"].tolist() == [-1, -1]
    only_type = build_condition(
        types.SimpleNamespace(class_label=None, attr_type="ape", accessory=None), run, 2
    )
    assert (only_type["accessories"] == -1).all()
    assert "warning" not in capsys.readouterr().out
    build_condition(
        types.SimpleNamespace(class_label=None, attr_type="ape", accessory=["blonde bob"]), run, 1
    )
    assert "never saw this combination" in capsys.readouterr().out

    # a condition is an exact accessory set (unnamed = absent): counts from the raw label rows above
    def counts(kind, wanted):
        names = spec.accessories
        rows = [
            {names[j] for j, v in enumerate(row) if v}
            for k, row in zip(spec.type_labels.tolist(), spec.accessory_labels.tolist())
            if k == kind
        ]
        return sum(r == set(wanted) for r in rows), sum(set(wanted) <= r for r in rows)

    assert counts(2, ["earring"]) == (0, 1)  # the only female with an earring also has a blonde bob
    build_condition(
        types.SimpleNamespace(class_label=None, attr_type="female", accessory=["earring"]), run, 1
    )
    out = capsys.readouterr().out
    assert "no training image has type 'female' with exactly the accessories 'earring'" in out
    assert "1 have them plus other accessories" in out and "requested as absent" in out
    assert counts(2, ["blonde bob"]) == (1, 2)  # one female has exactly a blonde bob: no warning
    build_condition(
        types.SimpleNamespace(class_label=None, attr_type="female", accessory=["blonde bob"]), run, 1
    )
    assert "warning" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"unknown accessory 'blond bob'; did you mean 'blonde bob'"):
        build_condition(
            types.SimpleNamespace(class_label=None, attr_type=None, accessory=["blond bob"]), run, 1
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(
            build_condition(
                types.SimpleNamespace(class_label=None, attr_type="alien", accessory=None), run, 1
            )["type"],
            torch.tensor([0]),
        )


def test_image_likelihood_uses_the_held_out_images(tiny_run, monkeypatch):
    """run_likelihood on an image run integrates exactly the dataset's held-out images (dequantised)."""
    from types import SimpleNamespace

    import diffguide.metrics.likelihood as L
    from diffguide.models.runs import load_run

    seen = []

    def fake_log_likelihood(denoiser, x, **kwargs):
        seen.append(x)
        return SimpleNamespace(log_prob=torch.zeros(len(x), dtype=torch.float64), nfe=1)

    monkeypatch.setattr(L, "log_likelihood", fake_log_likelihood)
    run = load_run(tiny_run / "tiny")
    result = L.run_likelihood(run, 10_000, batch_size=128)
    heldout, _ = run.dataset.heldout()
    assert result["n"] == len(heldout) == 300 and result["data"] == "held-out"
    x = torch.cat(seen)
    codes = torch.round((x + 1) * 127.5).to(torch.int64).flatten(1)  # back to the 8-bit levels
    expected = torch.round((heldout + 1) * 127.5).to(torch.int64).flatten(1)
    assert sorted(map(tuple, codes.tolist())) == sorted(map(tuple, expected.tolist()))
    levels = codes.reshape(x.shape).to(x.dtype) / 127.5 - 1
    assert ((x - levels).abs() <= 1 / 255 + 1e-6).all()  # dequantised within its 8-bit bin
    assert (x - levels).abs().max() > 1e-3  # and actually dequantised


def test_eval_progress_counts_every_sample(tiny_run, tiny_classifier):
    """evaluate_images passes the sampler callback on with "start" and "steps": eval's bar reaches n."""
    import io

    from diffguide.cli.progress import progress_bar, sampling_callback
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    run = load_run(tiny_run / "tiny")
    seen, screen = [], Terminal()
    with progress_bar(10, "sampling", "samples", file=screen) as bar:
        callback = sampling_callback(
            bar, then=lambda info: seen.append((info["start"], info["i"], info["steps"]))
        )
        evaluate_images(run, run.denoiser, tiny_classifier, n=10, batch_size=4, callback=callback)
        assert bar.n == pytest.approx(10)
    assert seen == [(start, i, 3) for start in (0, 4, 8) for i in range(3)]  # sample.steps=3
    assert "10/10 samples" in screen.getvalue()


def test_eval_on_a_grid_file_samples_on_its_sigmas(tiny_run, tiny_classifier, tmp_path):
    """eval --grid FILE (a tune-grid file) = eval with the file's sampler and the same sigmas built by
    name; --steps beside a file is refused by the real executable, writing nothing."""
    from diffguide.models.runs import load_run
    from diffguide.samplers.generation import sigma_grid
    from diffguide.samplers.grid_file import write_grid_file
    from tests.helpers import run_cli

    run_dir = tiny_run / "tiny"
    run = load_run(run_dir)
    s = run.config.sample
    grid = tmp_path / "euler-5.json"
    write_grid_file(
        grid, sigma_grid("karras", 5, run.process, s.sigma_min, s.sigma_max, s.rho), sampler="euler", nfe=5
    )
    common = ["eval", str(run_dir), "--classifier", str(tiny_classifier), "--n", "20", "--no-progress"]
    assert main([*common, "--grid", str(grid), "--out", str(tmp_path / "a.json")]) == 0
    assert main([*common, "--sampler", "euler", "--steps", "5", "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "ab")
    assert a["sampler"] == "euler" and a["steps"] == 5 and a["grid"] == str(grid)
    for key in ("fid_digits_clf", "kid_digits_clf", "accuracy", "precision_digits_clf"):
        assert a[key] == b[key], key
    refused = run_cli(*common, "--grid", str(grid), "--steps", "4", "--out", str(tmp_path / "c.json"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "fixes the sigmas" in refused.stderr
    assert not (tmp_path / "c.json").exists()


def test_eval_passes_sampler_options_to_the_sampler(tiny_run, tiny_classifier, tmp_path):
    """eval --sampler ddim --sampler-option eta=0.5 = the library with sampler_kwargs {"eta": 0.5} (and
    differs from eta 0); an option the sampler lacks exits 2 in the real executable, writing nothing."""
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run
    from tests.helpers import run_cli

    run_dir = tiny_run / "tiny"
    common = ["eval", str(run_dir), "--classifier", str(tiny_classifier), "--n", "20", "--sampler", "ddim"]
    assert main([*common, "--sampler-option", "eta=0.5", "--out", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    run = load_run(run_dir)
    lib, _ = evaluate_images(
        run, run.denoiser, tiny_classifier, n=20, sampler="ddim", sampler_kwargs={"eta": 0.5}
    )
    plain, _ = evaluate_images(run, run.denoiser, tiny_classifier, n=20, sampler="ddim")
    assert a["sampler_options"] == {"eta": 0.5} and a["fid_digits_clf"] == lib["fid_digits_clf"]
    assert plain["fid_digits_clf"] != lib["fid_digits_clf"]
    refused = run_cli(*common, "--sampler-option", "churn=1", "--out", str(tmp_path / "b.json"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "churn" in refused.stderr
    assert not (tmp_path / "b.json").exists()


def test_eval_raw_measures_the_raw_weights(tiny_run, tiny_classifier, tmp_path):
    """eval --raw = the library on the run loaded with use_ema=False, and not the EMA weights' result."""
    from diffguide.metrics.images import evaluate_images
    from diffguide.models.runs import load_run

    run_dir = tiny_run / "tiny"
    common = ["eval", str(run_dir), "--classifier", str(tiny_classifier), "--n", "20", "--no-progress"]
    assert main([*common, "--raw", "--out", str(tmp_path / "raw.json")]) == 0
    got = json.loads((tmp_path / "raw.json").read_text())
    raw, ema = load_run(run_dir, use_ema=False), load_run(run_dir)
    expected, _ = evaluate_images(raw, raw.denoiser, tiny_classifier, n=20)
    other, _ = evaluate_images(ema, ema.denoiser, tiny_classifier, n=20)
    assert got["fid_digits_clf"] == expected["fid_digits_clf"] != other["fid_digits_clf"]


def test_tune_grid_defaults_follow_the_kind_of_run():
    """Without --samples / --max-evals an image run gets the image defaults (fewer draws and a smaller
    search: a network evaluation costs far more), a 2D run the 2D ones; given values always win."""
    from diffguide.cli.tune_grid import TUNING_DEFAULTS, tuning_effort

    images, points = TUNING_DEFAULTS["images"], TUNING_DEFAULTS["points"]
    assert tuning_effort(None, None, "images") == (images["samples"], images["max_evals"]) == (32, 100)
    assert tuning_effort(None, None, "points") == (points["samples"], points["max_evals"]) == (256, 300)
    from diffguide.samplers.tuning import DEFAULT_MAX_EVALS, DEFAULT_SAMPLES

    assert (DEFAULT_SAMPLES, DEFAULT_MAX_EVALS) == (256, 300)  # the library's defaults are the 2D ones
    assert tuning_effort(7, None, "images") == (7, 100) and tuning_effort(None, 9, "points") == (256, 9)
