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


def test_train_classifier_and_eval(tiny_run):
    clf = tiny_run / "clf"
    assert (
        main(["train-classifier", "--data", "digits", "--out", str(clf), "--steps", "10", "--width", "8"])
        == 0
    )
    meta = json.loads((clf / "classifier.json").read_text())
    assert meta["kind"] == "image-classifier" and "class_accuracy" in meta["heldout"]
    out = tiny_run / "eval.json"
    args = ["eval", str(tiny_run / "tiny"), "--classifier", str(clf), "--n", "40", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for key in ("fid_digits_clf", "kid_digits_clf", "precision_digits_clf", "recall_digits_clf", "accuracy"):
        assert key in result
    assert 0 <= result["accuracy"] <= 1 and result["n"] == 40 and result["n_real"] == 300


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

    import diffguide.likelihood as L
    from diffguide.runs import load_run

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
