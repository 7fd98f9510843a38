"""Training: bit-equal resume (RNG, optimizer, EMA restored), checkpoint fallback and errors, logs,
and the loss identities that make every target a weighted x0-space error."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffguide.config import apply_overrides, load_preset
from diffguide.denoiser import ProcessPrecond
from diffguide.errors import CheckpointError
from diffguide.losses import DenoisingLoss, LossConfig
from diffguide.models.runs import load_run
from diffguide.processes import PROCESSES
from diffguide.train import train
from diffguide.train.checkpoint import DIGEST_KEY, list_checkpoints, read_checkpoint
from diffguide.train.logs import read_metrics
from diffguide.train.loop import lr_schedule
from diffguide.train.snapshots import list_snapshots, snapshot_path, snapshot_step

# Conditional tree data with label dropout (p_uncond) and dropout in the MLP: the training generator
# (data, noise, label dropout) must be restored from the checkpoint and the dropout masks reproduced
# (the loop reseeds the global RNG from (seed, step) each step) for a resumed run to be bit-equal.
SETS = [
    "train.steps=40",
    "train.ckpt_every=10",
    "train.keep_last=2",
    "train.log_every=10",
    "train.p_uncond=0.3",
    "model.dropout=0.1",
    "train.device=cpu",
]


def tiny_config(extra=()):
    cfg = apply_overrides(load_preset("tiny"), [*SETS, *extra])
    assert cfg.data.conditional and cfg.train.p_uncond > 0 and cfg.model.dropout > 0
    return cfg


def final_tensors(run_dir) -> dict[str, torch.Tensor]:
    tensors, meta = read_checkpoint(run_dir / "checkpoints" / "ckpt-00000040.safetensors")
    assert meta["step"] == "40"
    return tensors


def assert_bit_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    groups = {k.split(".")[0] for k in a}
    assert {"model", "ema", "optim", "rng"} <= groups  # weights, EMA, optimizer moments, RNG state
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:8]}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 40-step run."""
    run_dir = tmp_path_factory.mktemp("train") / "reference"
    train(tiny_config(), run_dir, progress=False)
    return run_dir


def test_resume_is_bit_equal(reference_run, tmp_path):
    cfg = tiny_config()
    run_dir = tmp_path / "resumed"
    train(cfg, run_dir, progress=False, stop_after=20)
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [
        "ckpt-00000010.safetensors",
        "ckpt-00000020.safetensors",
    ]
    perturbed = tmp_path / "perturbed"
    shutil.copytree(run_dir, perturbed)
    train(cfg, run_dir, progress=False, resume=True)
    assert_bit_equal(final_tensors(run_dir), final_tensors(reference_run))

    # The comparison has teeth: resuming with another state of the training generator (data, noise
    # levels, noise, label dropout) changes the result, so that state really is restored on resume.
    # (Rewritten without its sha256, like a checkpoint from before digests: those still load unchecked.)
    path = perturbed / "checkpoints" / "ckpt-00000020.safetensors"
    tensors, meta = read_checkpoint(path)
    tensors["rng.generator"] = torch.Generator().manual_seed(999).get_state()
    del meta[DIGEST_KEY]
    save_file(tensors, str(path), metadata=meta)
    train(cfg, perturbed, progress=False, resume=True)
    assert not torch.equal(
        final_tensors(perturbed)["model.inp.weight"], final_tensors(reference_run)["model.inp.weight"]
    )


def test_resume_with_power_ema_is_bit_equal(reference_run, tmp_path):
    """With train.ema_stds the power-function EMAs are in every checkpoint and resume bit-equal, and the
    resumed run's snapshots (every 7 steps, so the stop at step 20 falls between two) are the same
    tensors and metadata as the uninterrupted run's. A snapshot newer than the resumed checkpoint (a crash
    between the two writes) is deleted. Tracking them changes no training draw: the weights equal the
    run without them, which has neither their tensors nor a snapshot folder."""
    cfg = tiny_config(["train.ema_stds=[0.05, 0.10]", "train.ema_snapshot_every=7"])
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(cfg, whole, progress=False)
    train(cfg, resumed, progress=False, stop_after=20)
    snapshots = resumed / "ema-snapshots"
    assert [snapshot_step(p) for p in list_snapshots(snapshots)] == [7, 14]
    shutil.copy(list_snapshots(snapshots)[-1], snapshot_path(snapshots, 22))
    train(cfg, resumed, progress=False, resume=True)
    final = final_tensors(resumed)
    assert_bit_equal(final, final_tensors(whole))
    assert {"power_ema0", "power_ema1"} <= {k.split(".")[0] for k in final}
    assert not torch.equal(final["power_ema0.inp.weight"], final["power_ema1.inp.weight"])
    names = [p.name for p in list_snapshots(snapshots)]
    assert [snapshot_step(p) for p in list_snapshots(snapshots)] == [7, 14, 21, 28, 35, 40]
    assert names == [p.name for p in list_snapshots(whole / "ema-snapshots")]
    for name in names:  # (not byte for byte: safetensors writes its metadata in hash order)
        (mine, my_meta), (theirs, their_meta) = (
            read_checkpoint(d / name) for d in (snapshots, whole / "ema-snapshots")
        )
        assert my_meta == their_meta and sorted(mine) == sorted(theirs), name
        assert all(torch.equal(v, theirs[k]) for k, v in mine.items()), name
    reference = final_tensors(reference_run)
    assert all(torch.equal(final[k], v) for k, v in reference.items())
    assert not any(k.startswith("power_ema") for k in reference)
    assert not (reference_run / "ema-snapshots").exists()


def test_resume_a_run_saved_before_a_config_key_existed(reference_run, tmp_path):
    """A config.json written before a key was added (here model.norm_groups) resumes: the key takes its
    default, so the comparison with the current config sees no change and the result is bit-equal."""
    run_dir = tmp_path / "old"
    train(tiny_config(), run_dir, progress=False, stop_after=20)
    saved = json.loads((run_dir / "config.json").read_text())
    del saved["model"]["norm_groups"]
    (run_dir / "config.json").write_text(json.dumps(saved))
    train(tiny_config(), run_dir, progress=False, resume=True)
    assert_bit_equal(final_tensors(run_dir), final_tensors(reference_run))
    with pytest.raises(
        CheckpointError, match=r"differs from the saved one: model.norm_groups: saved 0, now 4"
    ):
        train(tiny_config(["model.norm_groups=4"]), run_dir, progress=False, resume=True)


def test_resume_mismatch_names_every_key_with_both_values(tmp_path):
    """Each differing key, dotted, with the saved and the new value; the safe keys changed alongside
    are not blamed; config.json is left as it was."""
    run_dir = tmp_path / "run"
    train(tiny_config(), run_dir, progress=False, stop_after=10)
    before = (run_dir / "config.json").read_bytes()
    changed = tiny_config(["train.lr=0.5", "model.width=64", "data.seed=1", "train.steps=80"])
    with pytest.raises(CheckpointError) as err:
        train(changed, run_dir, progress=False, resume=True)
    msg = str(err.value)
    assert "model.width: saved 32, now 64; train.lr: saved 0.002, now 0.5" in msg
    assert msg.startswith(
        f"cannot resume {str(run_dir)!r}: the config differs from the saved one: data.seed: saved 0, now 1; "
    )
    assert "train.steps" not in msg.split("a resume may change only")[0]
    assert "train.steps (grow only)" in msg or "train.steps may only grow" in msg
    assert (run_dir / "config.json").read_bytes() == before
    with pytest.raises(CheckpointError, match=r"train.steps: saved 40, now 30"):  # shrinking is refused
        train(tiny_config(["train.steps=30"]), run_dir, progress=False, resume=True)


def test_growing_steps_continues_the_run_bit_equal_to_a_longer_run(tmp_path, capsys):
    """A finished 20-step run resumed with train.steps=40 (and other safe keys changed) continues to
    step 40, equal bit for bit to a 40-step run (a constant learning rate, so the schedule does not
    depend on the length), and config.json now says 40."""
    constant = ['train.decay="none"']
    reference = tmp_path / "reference"
    train(tiny_config(constant), reference, progress=False)
    run_dir = tmp_path / "grown"
    train(tiny_config([*constant, "train.steps=20"]), run_dir, progress=False)
    capsys.readouterr()
    safe = ["train.log_every=5", "train.keep_last=3", "sample.steps=4"]
    train(tiny_config([*constant, *safe]), run_dir, progress=False, resume=True)
    said = capsys.readouterr().out
    assert "train.steps: saved 20, now 40" in said and "sample.steps: saved 8, now 4" in said
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 40
    assert_bit_equal(final_tensors(run_dir), final_tensors(reference))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_data_bytes(path, n=100):
    """Invert n bytes in the middle of the tensor data (after the 8-byte length and the JSON header):
    the file still parses, only the checksum can tell."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    middle = (start + len(data)) // 2
    data[middle : middle + n] = bytes(b ^ 0xFF for b in data[middle : middle + n])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, word", [(truncate, "truncated"), (flip_data_bytes, "corrupted")])
def test_damaged_latest_checkpoint_falls_back(reference_run, tmp_path, damage, word):
    """A half-written or corrupted newest checkpoint is skipped with a warning naming it; training
    resumes from the previous one (step 10) and still ends bit-equal to the uninterrupted run."""
    cfg = tiny_config()
    run_dir = tmp_path / "damaged"
    train(cfg, run_dir, progress=False, stop_after=20)
    latest = run_dir / "checkpoints" / "ckpt-00000020.safetensors"
    damage(latest)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "lo')  # and the crash tore the last metrics line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, run_dir, progress=False, resume=True)
    messages = [str(w.message) for w in caught]
    assert any("ckpt-00000020.safetensors" in m and word in m for m in messages), messages
    assert_bit_equal(final_tensors(run_dir), final_tensors(reference_run))

    # steps 11..20 ran twice; metrics.jsonl keeps one record per step, the same as the uninterrupted run's
    def logged(run):
        return [(r["step"], r["loss"]) for r in read_metrics(run)]

    assert logged(run_dir) == logged(reference_run) and len(logged(run_dir)) >= 4
    assert all(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def test_checkpoint_into_other_architecture_names_tensors(reference_run, tmp_path):
    run_dir = tmp_path / "changed"
    shutil.copytree(reference_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["width"] = 16
    config["model"]["depth"] = 2
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        load_run(run_dir)
    message = str(err.value)
    # names the tensors with both shapes (width 32 in the file, 16 in the config) ...
    assert "shape mismatch" in message and "blocks.0.fc2.bias: file (32,) vs model (16,)" in message
    assert "missing" in message and "blocks.1.fc1.bias" in message  # ... and the 2nd block's absent ones


def test_logs_checkpoints_and_pointer(reference_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ckpts = reference_run / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == [
        "ckpt-00000030.safetensors",
        "ckpt-00000040.safetensors",
    ]
    assert (ckpts / "latest").read_text().strip() == "ckpt-00000040.safetensors"  # keep_last=2 honoured
    records = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in records)
    events = EventAccumulator(str(reference_run / "tb"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [10, 20, 30, 40]
    for s, r in zip(scalars, records):
        assert s.value == pytest.approx(r["loss"], rel=1e-6)  # TensorBoard stores float32
    saved = json.loads((reference_run / "config.json").read_text())
    assert saved["train"]["steps"] == 40 and saved["model"]["dropout"] == 0.1
    run = load_run(reference_run)  # the model rebuilds from the folder alone
    assert run.step == 40 and run.checkpoint.name == "ckpt-00000040.safetensors"


def test_fresh_train_refuses_a_used_folder(reference_run):
    with pytest.raises(CheckpointError, match="--resume"):
        train(tiny_config(), reference_run, progress=False)
    with pytest.raises(CheckpointError, match="differs"):
        train(tiny_config(["train.lr=0.5"]), reference_run, progress=False, resume=True)


def test_learning_rate_schedule():
    """Linear warm-up to lr, then cosine decay to min_lr_ratio * lr at the last step."""
    cfg = apply_overrides(load_preset("tiny"), ["train.steps=100", "train.warmup_steps=10", "train.lr=0.01"])
    lr_at = lr_schedule(cfg.train)
    assert lr_at(0) == pytest.approx(0.001) and lr_at(9) == pytest.approx(0.01)
    assert lr_at(10) == pytest.approx(0.01)
    floor = cfg.train.min_lr_ratio * 0.01
    assert lr_at(55) == pytest.approx(floor + (0.01 - floor) * 0.5)  # half way: cos = 0
    assert lr_at(100) == pytest.approx(floor)


# ---------------------------------------------------------------------------------------------
# losses: each target's MSE, written in x0 space


class FixedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2).double()

    def forward(self, x_t, c_noise, cond=None):
        return self.lin(torch.cat([x_t, c_noise[:, None].to(x_t.dtype)], 1))


@pytest.mark.parametrize("target", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("process_name", ["vp", "ddpm", "ve"])
def test_native_loss_is_the_targets_mse(process_name, target):
    """With weighting 'native' the loss equals the plain MSE between the network output and its target
    (eps, x0, v = alpha eps - sigma_t x0 for VP, or std * score = -eps), computed from x0 and eps here."""
    torch.manual_seed(0)
    process = PROCESSES[process_name]()
    net = FixedNet()
    denoiser = ProcessPrecond(net, process, target)
    loss_fn = DenoisingLoss(
        LossConfig(target=target, weighting="native", noise_sampling="uniform-t"), process
    )
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    sigma, eps = loss_fn.draw_noise(x0, gen)
    loss = loss_fn(denoiser, x0, noise=(sigma, eps))
    s = sigma[:, None]
    alpha = 1 / (1 + s**2).sqrt() if process_name != "ve" else torch.ones_like(s)
    x_t = alpha * (x0 + s * eps)
    out = net(x_t, process.c_noise(process.t_of_sigma(sigma)))
    sigma_t = alpha * s
    wanted = {
        "eps": eps,
        "x0": x0,
        "v": (alpha * eps - sigma_t * x0) / (alpha**2 + sigma_t**2).sqrt(),
        "score": -eps,
    }[target]
    # the loss squares its x0-space error in float32 (bf16-safe), hence the float32-level tolerance
    torch.testing.assert_close(loss.double(), ((out - wanted) ** 2).mean(1), rtol=1e-4, atol=1e-7)
