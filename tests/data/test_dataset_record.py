"""Runs trained on a dataset registered from Python load in a new process that never registered it.

The training script registers two datasets and trains on each; every later command runs in another
process (the real CLI, or `python -c`) where the registration code never ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from diffguide.mixtures import make_mixture
from tests.helpers import run_cli

TRAIN_SCRIPT = textwrap.dedent(
    """
    import dataclasses
    import sys
    import numpy as np
    import torch
    from diffguide.config import load_preset
    from diffguide.data.points import PointCloudDataset
    from diffguide.data.registry import Dataset, Option, register
    from diffguide.mixtures import make_mixture
    from diffguide.train import train

    class Eight(Dataset):  # a user's own class: only `mixture` and `sample_batch`
        def __init__(self, cfg):
            self.mixture = make_mixture("8gaussians", std=cfg.options.get("std", 0.1))
            self.num_classes = 8 if cfg.conditional else 0
            self.class_names = self.mixture.class_names if cfg.conditional else []

        def sample_batch(self, n, generator):
            x, comp = self.mixture.sample(n, generator=generator)
            return x.float(), self.mixture.classes[comp] if self.num_classes else None

    @register("my-spiral")
    def spiral(cfg):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(300, 2))
        y = (x[:, 0] > 0).astype(int)
        y[:5] = 2  # a third class, rare
        return PointCloudDataset(x, y if cfg.conditional else None)

    register("my-eight", {"std": Option(float, positive=True)})(Eight)

    out = sys.argv[1]
    for name, conditional, options in (("my-spiral", True, {}), ("my-eight", False, {"std": 0.2})):
        cfg = load_preset("tiny")
        data = dataclasses.replace(cfg.data, name=name, conditional=conditional, options=options)
        steps = dataclasses.replace(cfg.train, steps=4, ckpt_every=4)
        cfg = dataclasses.replace(cfg, name=name, data=data, train=steps)
        train(cfg, f"{out}/{name}", progress=False)
    """
)


def spiral_points():
    """The points the training script registers, computed here independently of the run."""
    x = np.random.default_rng(0).normal(size=(300, 2))
    y = (x[:, 0] > 0).astype(int)
    y[:5] = 2
    return x, y


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("registered")
    r = python(TRAIN_SCRIPT, str(out))
    assert r.returncode == 0, r.stderr
    return out


LOAD = textwrap.dedent(
    """
    import json, sys
    from diffguide.models.runs import load_run
    run = load_run(sys.argv[1])
    ds = run.dataset
    print(json.dumps({"points": getattr(ds, "points", None) is not None and ds.points.tolist(),
                      "labels": getattr(ds, "labels", None) is not None and ds.labels.tolist(),
                      "num_classes": ds.num_classes, "shape": list(ds.shape),
                      "weights": ds.mixture is not None and ds.mixture.weights.tolist(),
                      "covs": ds.mixture is not None and ds.mixture.covs.tolist()}))
    """
)


def test_a_point_cloud_run_loads_with_the_points_it_trained_on(runs):
    """The record holds the registered points and labels (float32 of the originals) and the class count."""
    r = python(LOAD, str(runs / "my-spiral"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    x, y = spiral_points()
    np.testing.assert_array_equal(np.asarray(got["points"], dtype=np.float32), x.astype(np.float32))
    assert got["labels"] == y.tolist() and got["num_classes"] == 3 and got["shape"] == [2]
    r = run_cli("sample", str(runs / "my-spiral"), "--class", "2", "--n", "50",
                "--out", str(runs / "spiral.npz"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    saved = np.load(runs / "spiral.npz")
    assert saved["samples"].shape == (50, 2) and (saved["labels"] == 2).all()


def test_a_mixture_run_keeps_its_exact_density_and_metrics(runs):
    """The user's class had an exact mixture (8 Gaussians, std 0.2): the record is that mixture, so the
    CLI in a new process prints the exact metrics against it."""
    r = python(LOAD, str(runs / "my-eight"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    truth = make_mixture("8gaussians", std=0.2)
    torch.testing.assert_close(torch.tensor(got["covs"], dtype=torch.float64), truth.covs)
    torch.testing.assert_close(torch.tensor(got["weights"], dtype=torch.float64), truth.weights)
    assert got["num_classes"] == 0
    r = run_cli("sample", str(runs / "my-eight"), "--n", "200", "--out", str(runs / "eight.npz"))
    assert r.returncode == 0, r.stderr
    assert "exact metrics against p(x): precision" in r.stdout


def test_a_run_without_its_record_names_the_dataset_and_the_way_out(runs, tmp_path):
    """Record deleted (as in a run trained before records existed): one line, exit 2, nothing written."""
    run = shutil.copytree(runs / "my-spiral", tmp_path / "run")
    (run / "dataset.safetensors").unlink()
    before = sorted(p.name for p in run.rglob("*"))
    out = tmp_path / "s.npz"
    r = run_cli("sample", str(run), "--n", "10", "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "'my-spiral'" in lines[0] and "register" in lines[0] and "dataset.safetensors" in lines[0]
    assert not out.exists() and sorted(p.name for p in run.rglob("*")) == before
