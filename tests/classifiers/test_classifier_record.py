"""The one classifier record (classifier.json + safetensors) for both kinds: round trip, the layouts
written before it, and a classifier of the wrong kind refused with a ConfigError naming file and kinds."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from diffguide import classifiers
from diffguide.classifiers import images, points
from diffguide.classifiers.record import FORMAT, ClassifierRecord, write_classifier
from diffguide.data.registry import DataConfig
from diffguide.errors import CheckpointError, ConfigError

RECORD_KEYS = {"format", "kind", "weights", "architecture", "data", "training"}


def randomized(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """net with every saved float tensor (BatchNorm statistics too) drawn at random, so a round trip
    that dropped or mixed up any tensor would change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():  # not the embedding's fixed frequencies: those are not saved
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return net.eval()


def points_net() -> points.NoisyClassifier:
    sizes = points.PointsArchitecture(dim=2, num_classes=3, width=8, depth=2, emb_dim=8, sigma_data=0.7)
    return randomized(points.NoisyClassifier(**asdict(sizes)), 0), sizes


def image_net() -> images.ImageClassifier:
    sizes = images.ImageArchitecture(in_channels=1, num_classes=4, width=4, feature_dim=6, pool=2)
    return randomized(images.ImageClassifier(**asdict(sizes)), 1), sizes


def points_output(net, seed=2):
    g = torch.Generator().manual_seed(seed)
    x, sigma = torch.randn(5, 2, generator=g), torch.rand(5, generator=g) * 3 + 0.01
    return net(x, sigma)


def image_output(net, seed=3):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return net(x)["class"]


@pytest.mark.parametrize("kind", ["points", "images"])
def test_record_round_trip_for_both_kinds(kind, tmp_path):
    net, sizes = points_net() if kind == "points" else image_net()
    output = points_output if kind == "points" else image_output
    data = DataConfig(name="tree" if kind == "points" else "digits", conditional=True, seed=4)
    training = {"steps": 7, "batch_size": 3, "lr": 0.01, "seed": 5}
    write_classifier(tmp_path / "clf", net, ClassifierRecord(kind=kind, architecture=asdict(sizes),
                                                            data=data, training=training))  # fmt: skip
    written = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert set(written) == RECORD_KEYS  # the same layout for both kinds
    assert written["format"] == FORMAT and written["kind"] == kind
    assert written["weights"] == {"points": "classifier.safetensors", "images": "model.safetensors"}[kind]
    assert {p.name for p in (tmp_path / "clf").iterdir()} == {"classifier.json", written["weights"]}

    loaded = classifiers.load_classifier(tmp_path / "clf")  # dispatches on the record's kind
    assert type(loaded) is type(net) and not loaded.training
    assert loaded.record == ClassifierRecord(FORMAT, kind, written["weights"], asdict(sizes), data, training)
    state, again = net.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(output(net), output(loaded))
    # the kind's own loader reads it too (the names the guidance builder and the metrics call)
    if kind == "points":
        assert torch.equal(points_output(points.load_classifier(tmp_path / "clf")), points_output(net))
    else:
        model, record = images.load_classifier(tmp_path / "clf")
        assert torch.equal(image_output(model), image_output(net)) and record["data"]["name"] == "digits"


def test_trained_image_classifier_writes_the_common_record(tmp_path):
    folder = images.train_classifier(
        DataConfig(name="digits"), tmp_path / "clf", steps=2, batch_size=8, width=4, feature_dim=6, log=None
    )
    written = json.loads((folder / "classifier.json").read_text())
    assert set(written) == RECORD_KEYS and written["kind"] == "images"
    assert written["architecture"]["num_classes"] == 10 and written["training"]["steps"] == 2
    assert set(written["training"]["heldout"]) == {"class_accuracy"}
    model, record = images.load_classifier(folder)
    assert model.record.num_classes == 10 and record["training"] == written["training"]


def test_old_points_layout_still_loads(tmp_path):
    """A folder as the writer before the common record left it (format "diffguide-classifier-2")."""
    net, sizes = points_net()
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "classifier.safetensors")
    )
    old = {
        "format": "diffguide-classifier-2",
        "classifier": {
            "width": 8,
            "depth": 2,
            "emb_dim": 8,
            "steps": 9,
            "batch_size": 64,
            "lr": 0.002,
            "seed": 1,
            "sigma_data": 0.7,
        },
        "data": {"name": "tree", "size": 100000, "conditional": True, "seed": 0, "path": "", "options": {}},
        "noise": {"target": "edm", "noise_sampling": "log-normal", "p_mean": -1.2, "p_std": 1.2},
        "process": {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0},
        "dim": 2,
        "num_classes": 3,
        "step": 9,
        "final_loss": 0.25,
    }
    (folder / "classifier.json").write_text(json.dumps(old, indent=2))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for clf in (points.load_classifier(folder), classifiers.load_classifier(folder)):
        with torch.no_grad():
            assert torch.equal(points_output(clf), points_output(net))
        assert clf.record.architecture == asdict(sizes) and clf.record.num_classes == 3
        assert clf.record.training["steps"] == 9 and clf.record.training["noise"] == old["noise"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # read, never rewritten
    with pytest.raises(ConfigError, match="is a noise-conditional classifier of 2D points .kind 'points'"):
        images.load_classifier(folder)


def test_old_image_layout_still_loads(tmp_path):
    """A folder as the image writer before the common record left it ("kind": "image-classifier")."""
    net, sizes = image_net()
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    old = {
        "kind": "image-classifier",
        "data": {"name": "digits", "size": 100000, "conditional": True, "seed": 0, "path": "", "options": {}},
        "sizes": asdict(sizes),
        "steps": 60,
        "batch_size": 128,
        "seed": 0,
        "train_seconds": 1.5,
        "heldout": {"class_accuracy": 0.7},
    }
    (folder / "classifier.json").write_text(json.dumps(old, indent=2))
    model, record = images.load_classifier(folder)
    with torch.no_grad():
        assert torch.equal(image_output(model), image_output(net))
    assert record["kind"] == "images" and record["data"]["name"] == "digits"
    assert record["training"]["heldout"] == {"class_accuracy": 0.7}
    assert record["architecture"] == asdict(sizes)
    assert type(classifiers.load_classifier(folder)) is images.ImageClassifier
    with pytest.raises(ConfigError, match="is an image feature classifier .kind 'images'., but a noise"):
        points.load_classifier(folder)


def test_wrong_kind_and_damaged_records_name_the_file(tmp_path):
    net, sizes = points_net()
    record = ClassifierRecord(kind="points", architecture=asdict(sizes), data=DataConfig(conditional=True))
    folder = write_classifier(tmp_path / "clf", net, record)
    path = str(folder / "classifier.json")
    with pytest.raises(ConfigError) as error:
        images.load_classifier(folder)
    message = str(error.value)
    assert repr(path) in message and "kind 'points'" in message and "(kind 'images') is expected" in message
    assert "diffguide train-classifier" in message  # what to do
    with pytest.raises(ConfigError, match="kind 'images'"):
        classifiers.load_classifier(folder, expected="images")

    written = json.loads((folder / "classifier.json").read_text())
    for damage, match in [
        ({**written, "kind": "voxels"}, "unknown classifier kind 'voxels'; choices: points, images"),
        ({**written, "architecture": {**written["architecture"], "widht": 8}}, "unknown config key 'architecture.widht'"),
        ({**written, "architecture": {**written["architecture"], "width": "wide"}}, "architecture.width: expected an integer"),
        ({**written, "weights": "../elsewhere.safetensors"}, "weights must name a .safetensors file in the same folder"),
        ({k: v for k, v in written.items() if k != "kind"}, "unknown classifier kind ''"),
        ({**written, "format": "diffguide-classifier-9"}, "format 'diffguide-classifier-9', expected 'diffguide-classifier-3'"),
    ]:  # fmt: skip
        (folder / "classifier.json").write_text(json.dumps(damage))
        with pytest.raises(CheckpointError, match=match) as error:
            classifiers.load_classifier(folder)
        assert path in str(error.value)


def test_image_classifier_as_guide_of_a_2d_run_exits_2(cli_run, tmp_path, capsys):
    """`sample 2D_RUN --guidance classifier --guide IMAGE_CLASSIFIER`: the other wrong kind, through the
    CLI: exit 2, the one-line error naming the file and both kinds, and no samples written."""
    from diffguide.cli import main

    folder = images.train_classifier(
        DataConfig(name="digits"), tmp_path / "clf", steps=1, batch_size=8, width=4, feature_dim=6, log=None
    )
    out = tmp_path / "x.npz"
    capsys.readouterr()
    argv = ["sample", str(cli_run), "--n", "4", "--class", "0", "--guidance", "classifier"]
    assert main([*argv, "--guide", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"diffguide sample: error: {str(folder / 'classifier.json')!r} is an image feature classifier "
        "(kind 'images'), but a noise-conditional classifier of 2D points (kind 'points') is expected "
        "here; train one with `diffguide train ... --with-classifier`\n"
    )
    assert not out.exists()


def test_unwritable_classifier_folder_names_the_path(tmp_path):
    (tmp_path / "file").write_text("")
    net, sizes = points_net()
    record = ClassifierRecord(kind="points", architecture=asdict(sizes), data=DataConfig(conditional=True))
    with pytest.raises(ConfigError, match="/file' is a file, not a folder"):
        write_classifier(tmp_path / "file" / "clf", net, record)
