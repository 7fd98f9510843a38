"""Gradient accumulation, bf16 autocast and torch.compile change how a step is computed, not what it
computes: each is compared with plain fp32 eager training of the same run (CPU)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from diffguide.config import apply_overrides, load_preset
from diffguide.train import train
from diffguide.train.logs import read_metrics

STEPS = 6  # stop_after this many of 100 steps: no end-of-run figure, the learning rate is warmed up
SETS = ["train.steps=100", "train.log_every=1", "train.ckpt_every=1000"]


def run(run_dir, extra=()) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train tiny for STEPS steps; its final weights and EMA ("model.*", "ema.*") and metrics records."""
    state = {}

    def keep(net, ema):
        state.update({f"model.{k}": v.detach().clone() for k, v in net.state_dict().items()})
        state.update({f"ema.{k}": v.clone() for k, v in ema.shadow.items()})

    cfg = apply_overrides(load_preset("tiny"), [*SETS, *extra])
    train(cfg, run_dir, progress=False, stop_after=STEPS, on_finish=keep)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return state, records


def max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def linear_output_dtypes(records: list):
    """Record the output dtype of every nn.Linear forward in training mode (all modules, globally)."""

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            records.append(output.dtype)

    return torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    return run(tmp_path_factory.mktemp("precision") / "fp32")


def test_accumulating_4_micro_batches_equals_one_batch(fp32_run, tmp_path):
    """accum_steps=4 over the same global batch: the averaged micro-batch gradients are the batch
    gradient, so losses, gradient norms (the scale too, which Adam alone would hide) and the final
    weights and EMA agree up to float32 summation order (measured: 3e-8 in weights, 2e-7 relative in
    the gradient norm)."""
    state, records = run(tmp_path / "accum", ["train.accum_steps=4"])
    reference, reference_records = fp32_run
    for r, ref in zip(records, reference_records):
        assert r["loss"] == pytest.approx(ref["loss"], abs=1e-6), (r, ref)
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-6), (r, ref)
    assert max_difference(state, reference) < 1e-6


def test_bf16_autocast_runs_in_bf16_and_stays_close_to_fp32(fp32_run, tmp_path):
    """precision=bf16: the linear layers really compute in bfloat16, the master weights stay float32,
    and after 6 steps the run is close to fp32 (measured: 6e-4 in weights of size up to 2.7, losses
    within 5e-5 relative; the tolerances below are 10 and 20 times that)."""
    dtypes = []
    handle = linear_output_dtypes(dtypes)
    try:
        state, records = run(tmp_path / "bf16", ['train.precision="bf16"'])
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}, set(dtypes)
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())
    reference, reference_records = fp32_run
    for r, ref in zip(records, reference_records):
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-3), (r, ref)
    worst = max_difference(state, reference)
    assert 0 < worst < 5e-3, worst  # bf16 changed the numbers, but only a little


def test_fp32_run_computes_in_fp32(tmp_path):
    """The other side of the dtype observation: without bf16 the same layers compute in float32."""
    dtypes = []
    handle = linear_output_dtypes(dtypes)
    try:
        cfg = apply_overrides(load_preset("tiny"), SETS)
        train(cfg, tmp_path / "fp32", progress=False, stop_after=1)
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.float32}, set(dtypes)


# Inductor (torch.compile's default backend) generates and compiles C++ on the CPU: one step of tiny
# took 80 s on the 2-core test machine, too long for the suite. The test therefore compiles through
# aot_eager (TorchDynamo captures the network, AOTAutograd traces forward and backward, no code
# generation); set DIFFGUIDE_TEST_INDUCTOR=1 to also run it through inductor.
@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                not os.environ.get("DIFFGUIDE_TEST_INDUCTOR"), reason="set DIFFGUIDE_TEST_INDUCTOR=1 (slow)"
            ),
        ),
    ],
)
def test_compiled_training_matches_eager(fp32_run, tmp_path, monkeypatch, backend):
    """train.compile=true: the loop's network goes through torch.compile (a graph is captured) and the
    compiled steps give the eager losses and weights (the first step's loss alone would not tell:
    the output layer starts at zero)."""
    graphs = []
    real_compile = torch.compile

    def recording(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=recording))
    try:
        state, records = run(tmp_path / "compiled", ["train.compile=true"])
    finally:
        torch._dynamo.reset()
    assert graphs, "torch.compile was not used"
    reference, reference_records = fp32_run
    for r, ref in zip(records, reference_records):
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5), (r, ref)
    assert max_difference(state, reference) < 1e-5


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch, native):
    """A CPU without AVX512-BF16 or AMX emulates bfloat16 (measured 8-20x slower than fp32 on an AVX2
    AMD EPYC): asking for bf16 there warns and names the fix; a CPU with them does not warn."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cfg = apply_overrides(load_preset("tiny"), [*SETS, 'train.precision="bf16"'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, tmp_path / "run", progress=False, stop_after=1)
    slow = [str(w.message) for w in caught if "bfloat16 instructions" in str(w.message)]
    assert len(slow) == (0 if native else 1), slow
    if slow:
        assert "use train.precision=fp32" in slow[0]
