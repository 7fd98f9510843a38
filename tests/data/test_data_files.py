"""Your own 2D data from files: point clouds (.npy/.npz/.csv) and exact mixtures (.json/.safetensors)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from diffguide.data import make_dataset
from diffguide.data.files import read_mixture, read_points, resolve_data_path
from diffguide.data.registry import DataConfig
from diffguide.errors import DataError
from diffguide.mixtures import make_mixture
from tests.helpers import run_cli


def mixture_dict(m) -> dict:
    return {
        "weights": m.weights.tolist(),
        "means": m.means.tolist(),
        "covs": m.covs.tolist(),
        "classes": m.classes.tolist(),
        "class_names": list(m.class_names),
    }


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_a_mixture_file_is_the_same_exact_density(suffix, tmp_path):
    """The 8 Gaussians written to a file and read back: log p, score and the exact denoiser agree with
    the built-in mixture to float64 rounding at every noise level (they are the same closed form)."""
    m = make_mixture("8gaussians")
    path = tmp_path / f"m{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(mixture_dict(m)))
    else:
        save_file({k: getattr(m, k).numpy() for k in ("weights", "means", "covs", "classes")}, str(path))
    got = read_mixture(path)
    x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    for sigma in (0.0, 0.3, 5.0):
        torch.testing.assert_close(got.log_prob(x, sigma), m.log_prob(x, sigma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got(x, torch.full((200,), 0.5)), m(x, torch.full((200,), 0.5)))
    assert got.num_classes == m.num_classes


def test_points_from_csv_npy_and_npz_agree(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2))
    y = rng.integers(0, 3, 50)
    np.save(tmp_path / "p.npy", x)
    np.savez(tmp_path / "p.npz", x=x, labels=y)
    np.savetxt(tmp_path / "p.csv", np.column_stack([x, y]), delimiter=",", header="a,b,label", comments="")
    np.savetxt(tmp_path / "q.csv", np.column_stack([y, x]), delimiter=",")  # no header: label column 0
    assert read_points(tmp_path / "p.npy")[1] is None
    np.testing.assert_array_equal(read_points(tmp_path / "p.npy")[0], x)
    for name, col in (("p.npz", None), ("p.csv", None), ("q.csv", 0)):
        points, labels = read_points(tmp_path / name, label_column=col)
        np.testing.assert_allclose(points, x, rtol=1e-15)  # csv: %.18e round-trips float64
        np.testing.assert_array_equal(labels, y)
    data = make_dataset(DataConfig(name="points", path=str(tmp_path / "p.csv"), conditional=True))
    assert data.num_classes == int(y.max()) + 1 and data.shape == (2,)


def test_missing_labels_for_a_conditional_run_say_how_to_add_them(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros((5, 2)))
    with pytest.raises(DataError, match="has no labels: add a 'label' column"):
        make_dataset(DataConfig(name="points", path=str(tmp_path / "p.npy"), conditional=True))


def digest(folder: Path) -> dict:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def bad_files(tmp: Path) -> list[tuple[str, str, str]]:
    """(dataset, file, the words the one-line error must contain)."""
    m = mixture_dict(make_mixture("8gaussians"))
    cases = []
    nan = np.zeros((6, 2))
    nan[3, 1] = np.nan
    np.save(tmp / "nan.npy", nan)
    cases.append(("points", "nan.npy", "row 3"))
    np.save(tmp / "flat.npy", np.zeros(6))
    cases.append(("points", "flat.npy", "[N, D]"))
    (tmp / "ragged.csv").write_text("1,2\n3,4\n5\n")
    cases.append(("points", "ragged.csv", "line 3"))
    (tmp / "words.csv").write_text("1,2\n3,four\n")
    cases.append(("points", "words.csv", "line 2"))
    for name, change, words in (
        ("sum.json", {"weights": [0.2] * 8}, "sum to 1.6"),
        (
            "pd.json",
            {"covs": [[[1.0, 2.0], [2.0, 1.0]]] * 8},
            "component 0 is not symmetric positive definite",
        ),
        ("shape.json", {"means": m["means"][:3]}, "shapes disagree"),
        ("neg.json", {"weights": [-0.125] + [0.125] * 7}, "component 0 is negative"),
    ):
        (tmp / name).write_text(json.dumps({**m, **change}))
        cases.append(("mixture", name, words))
    (tmp / "nomeans.json").write_text(json.dumps({"weights": [1.0]}))
    cases.append(("mixture", "nomeans.json", "no 'means'"))
    return cases


def test_bad_files_exit_2_naming_the_file_and_the_rule(tmp_path):
    """Through the real executable: exit 2, one line naming the file and what is wrong, no traceback,
    nothing written and no existing file changed."""
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "runs"
    cases = bad_files(data)
    before = digest(data)
    for dataset, name, words in cases:
        r = run_cli("train", "--preset", "tiny", "--set", f"data.name={dataset}", "--set",
                    f"data.path={data / name}", "--out", str(out), "--no-progress")  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert name in lines[0] and words in lines[0], lines[0]
    assert digest(data) == before and not out.exists()


def test_a_run_keeps_its_data_file_and_samples_with_exact_metrics_after_it_moves(tmp_path):
    """Train on a mixture file; move the file away; `sample` still works from the run's kept copy and
    prints the exact metrics the mixture makes possible."""
    m = mixture_dict(make_mixture("8gaussians"))
    src = tmp_path / "mine.json"
    src.write_text(json.dumps(m))
    out = tmp_path / "runs"
    r = run_cli("train", "--preset", "tiny", "--set", "data.name=mixture", "--set", f"data.path={src}",
                "--set", "train.steps=20", "--out", str(out), "--name", "mine", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "mine" / "data" / "mine.json").read_text()) == m
    shutil.move(src, tmp_path / "elsewhere.json")
    r = run_cli("sample", str(out / "mine"), "--n", "200", "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    assert "exact metrics against p(x): precision" in r.stdout


def test_a_run_whose_file_is_gone_names_both_paths(tmp_path):
    cfg = DataConfig(name="mixture", path=str(tmp_path / "gone.json"))
    with pytest.raises(
        DataError, match=r"gone.json', which no longer exists, and keeps no copy in .*run/data"
    ):
        resolve_data_path(cfg, tmp_path / "run")
    kept = tmp_path / "run" / "data" / "gone.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    assert resolve_data_path(cfg, tmp_path / "run").path == str(kept)
