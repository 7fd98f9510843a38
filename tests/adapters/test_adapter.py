"""The diffusers adapter: a saved diffusers model folder loads as a diffguide denoiser.

Each check compares against diffusers itself: the scheduler's own x0 prediction, the scheduler's own
alpha_bar table, or a diffusers sampling loop on the same tiny randomly initialised UNet.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is needed for the adapter tests")

from diffguide.adapters.diffusers import (  # noqa: E402
    EpsModelFromDenoiser,
    diffusers_denoiser,
    load_diffusers,
    load_diffusers_denoiser,
    process_from_scheduler_config,
)
from diffguide.errors import CheckpointError, ConfigError  # noqa: E402
from diffguide.grids import spaced_sigmas  # noqa: E402
from diffguide.mixtures import eight_gaussians  # noqa: E402
from diffguide.samplers import sample_ddim, sample_euler  # noqa: E402
from diffguide.samplers.generation import generate, sigma_grid  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def tiny_unet(**kwargs):
    torch.manual_seed(0)
    config = dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    config.update(kwargs)
    return diffusers.UNet2DModel(**config).eval()


def tiny_condition_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
    ).eval()


def save_pipeline(folder, unet, scheduler, flat=False):
    if flat:  # UNet config.json + weights and scheduler_config.json side by side
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    else:  # the layout of a saved pipeline
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return folder


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("flat", [False, True])
def test_loaded_denoiser_matches_scheduler_x0(tmp_path, unet, prediction_type, flat):
    scheduler = diffusers.DDPMScheduler(
        prediction_type=prediction_type,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
    )
    model = load_diffusers(save_pipeline(tmp_path, unet, scheduler, flat))
    assert model.shape == (3, 8, 8)
    assert model.target == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]
    x_t = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (0, 17, 500, 999):
        with torch.no_grad():
            reference = scheduler.step(unet(x_t, t).sample, t, x_t).pred_original_sample
            abar = scheduler.alphas_cumprod[t].double()
            sigma = ((1 - abar) / abar).sqrt()
            ours = model.denoiser(x_t.double() / abar.sqrt(), sigma)  # scale-free x = x_t / sqrt(abar)
        scale = reference.abs().max()
        assert (ours - reference).abs().max() < 1e-5 * max(1.0, float(scale)), (prediction_type, t)


@pytest.mark.parametrize(
    "config",
    [
        dict(beta_schedule="linear"),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(num_train_timesteps=50, trained_betas=torch.linspace(1e-3, 0.2, 50).tolist()),
    ],
)
def test_process_matches_scheduler_table(config):
    scheduler = diffusers.DDPMScheduler(**config)
    process = process_from_scheduler_config(dict(scheduler.config))
    abar = scheduler.alphas_cumprod.double()
    assert len(abar) == process.T
    assert torch.allclose(process.sigmas, ((1 - abar) / abar).sqrt(), rtol=1e-12, atol=0)
    t = torch.arange(process.T, dtype=torch.float64)
    assert torch.allclose(process.t_of_sigma(process.sigmas), t, atol=1e-6)


def test_zero_terminal_snr_is_clipped_to_a_finite_sigma():
    scheduler = diffusers.DDPMScheduler(rescale_betas_zero_snr=True)
    assert float(scheduler.alphas_cumprod[-1]) == 0
    process = process_from_scheduler_config(dict(scheduler.config))
    assert torch.isfinite(process.sigmas).all() and (process.sigmas[1:] > process.sigmas[:-1]).all()
    abar = scheduler.alphas_cumprod[:-1].double()
    assert torch.allclose(process.sigmas[:-1], ((1 - abar) / abar).sqrt(), rtol=1e-12, atol=0)


def test_a_diffusers_flow_model_loads_as_a_velocity_denoiser(tmp_path, unet):
    """A folder diffusers itself saved with a FlowMatchEulerDiscreteScheduler (here num_train_timesteps 500,
    so the UNet is told 500 t): its scheduler loop equals our Euler sampler over its flow times t,
    sigma = t / (1 - t), the first t = 1 (sigma = inf) standing as sigma = 1e8."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=500, shift=2.0)
    model = load_diffusers(save_pipeline(tmp_path, unet, scheduler))
    assert model.target == "velocity" and model.process.shift == 2.0
    assert model.process.num_train_timesteps == 500
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler.set_timesteps(5)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    flow_t = scheduler.sigmas.double()
    sigmas = flow_t / (1 - flow_t)
    sigmas[0] = 1e8
    ours = sample_euler(model.denoiser, noise.double() * sigmas[0], sigmas)
    assert float((x - noise).abs().mean()) > 0.1
    assert (ours - x.double()).abs().max() < 1e-5 * max(1.0, float(x.abs().max()))


def test_flow_scheduler_with_inverted_sigmas_is_refused(tmp_path, unet):
    """invert_sigmas puts t = 1 at the data, the reverse of our flow process."""
    folder = save_pipeline(tmp_path, unet, diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True))
    with pytest.raises(ConfigError, match="invert_sigmas=true"):
        load_diffusers(folder)


def test_sampling_the_loaded_unet_matches_diffusers_ddim(tmp_path, unet):
    scheduler = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    model = load_diffusers(save_pipeline(tmp_path, unet, scheduler))
    assert model.timestep_spacing == "trailing"
    n = 10
    scheduler.set_timesteps(n)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x = z.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    sigmas = spaced_sigmas(n, model.process, model.timestep_spacing, model.steps_offset)
    ours = sample_ddim(model.denoiser, z.double() * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    assert (ours.float() - x).abs().max() < 1e-4 * max(1.0, float(x.abs().max()))


def test_generate_runs_on_a_loaded_model(tmp_path, unet):
    scheduler = diffusers.DDPMScheduler()
    model = load_diffusers(save_pipeline(tmp_path, unet, scheduler))
    sigmas = sigma_grid("karras", 4, model.process)
    x = generate(model.denoiser, 3, model.shape, sigmas=sigmas, sampler="heun", seed=1)
    assert x.shape == (3, 3, 8, 8) and torch.isfinite(x).all()
    # per-sample seeds: sample 2 does not depend on the batch it is drawn in
    alone = generate(model.denoiser, 3, model.shape, sigmas=sigmas, sampler="heun", seed=1, batch_size=1)
    assert torch.allclose(alone, x, rtol=1e-4, atol=1e-4)


def test_condition_unet_receives_encoder_hidden_states(tmp_path):
    unet = tiny_condition_unet()
    denoiser = load_diffusers_denoiser(save_pipeline(tmp_path, unet, diffusers.DDPMScheduler()))
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    text = torch.randn(2, 5, 8, generator=g)
    t = 400
    abar = diffusers.DDPMScheduler().alphas_cumprod[t].double()
    sigma = ((1 - abar) / abar).sqrt()
    with torch.no_grad():
        eps = unet(x_t, t, encoder_hidden_states=text).sample.double()
        expected = (x_t.double() - (1 - abar).sqrt() * eps) / abar.sqrt()
        ours = denoiser(x_t.double() / abar.sqrt(), sigma, text)
        as_dict = denoiser(x_t.double() / abar.sqrt(), sigma, {"encoder_hidden_states": text})
        other = denoiser(x_t.double() / abar.sqrt(), sigma, torch.zeros_like(text))
    assert (ours - expected).abs().max() < 1e-4
    assert torch.equal(ours, as_dict)
    assert (ours - other).abs().max() > 1e-3  # the condition reaches the network


def test_class_conditional_unet_receives_labels(tmp_path):
    unet = tiny_unet(num_class_embeds=3)
    denoiser = load_diffusers_denoiser(save_pipeline(tmp_path, unet, diffusers.DDPMScheduler()))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        a = denoiser(x, 2.0, torch.tensor([0, 0]))
        b = denoiser(x, 2.0, torch.tensor([2, 2]))
        t = denoiser.process.t_of_sigma(torch.tensor([2.0, 2.0], dtype=torch.float64)).float()
        abar = 1 / (1 + 2.0**2)
        eps = unet(x * abar**0.5, t, class_labels=torch.tensor([0, 0])).sample
    assert (a - b).abs().max() > 1e-3
    assert (a.float() - (x - 2.0 * eps)).abs().max() < 1e-4


def test_learned_variance_output_keeps_the_mean_channels(tmp_path):
    unet = tiny_unet(out_channels=6)
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range")
    denoiser = load_diffusers_denoiser(save_pipeline(tmp_path, unet, scheduler))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert denoiser(x, 1.0).shape == x.shape


def test_eps_model_round_trip_is_the_denoiser():
    mixture = eight_gaussians(std=0.3)
    config = dict(diffusers.DDPMScheduler().config)
    process = process_from_scheduler_config(config)
    denoiser = diffusers_denoiser(EpsModelFromDenoiser(mixture, process), config)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    for t in (0, 10, 500, 999):
        sigma = process.sigmas[t]
        assert torch.allclose(denoiser(x, sigma), mixture(x, sigma), atol=1e-10)


def test_errors_name_the_problem(tmp_path, unet):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_diffusers(tmp_path / "missing")
    unet.save_pretrained(tmp_path / "only-unet")
    with pytest.raises(CheckpointError, match="scheduler_config.json"):
        load_diffusers(tmp_path / "only-unet")
    with pytest.raises(ConfigError, match="did you mean 'epsilon'"):
        diffusers_denoiser(unet, {"prediction_type": "epsilom"})


def test_cli_samples_a_diffusers_folder_like_the_library(tmp_path, unet, capsys):
    """`diffguide sample --diffusers DIR` equals generate(load_diffusers(DIR).denoiser, ...), same seed."""
    from diffguide.cli import main

    folder = save_pipeline(tmp_path / "model", unet, diffusers.DDPMScheduler(), flat=True)
    out = tmp_path / "samples" / "s.npz"
    args = ["sample", "--diffusers", str(folder), "--n", "3", "--steps", "5", "--sampler", "unipc"]
    args += ["--sampler-option", "order=3"]  # the sampler's own options reach it on this path too
    assert main([*args, "--seed", "4", "--batch-size", "2", "--out", str(out)]) == 0
    samples = np.load(out)["samples"]
    assert samples.shape == (3, 3, 8, 8) and np.isfinite(samples).all()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the grid next to it
    model = load_diffusers(folder)
    expected = generate(
        model.denoiser,
        3,
        model.shape,
        sigmas=sigma_grid("karras", 5, model.process),
        sampler="unipc",
        seed=4,
        batch_size=2,
        sampler_kwargs={"order": 3},
    )
    assert np.array_equal(samples, expected.numpy())
    # another seed gives other samples; a .png --out writes only the grid
    grid = tmp_path / "grid.png"
    assert main([*args, "--seed", "5", "--out", str(grid)]) == 0
    assert grid.is_file() and not grid.with_suffix(".npz").exists()


def test_cli_samples_a_diffusers_folder_on_a_grid_file(tmp_path, unet):
    """`sample --diffusers DIR --grid FILE` samples on the file's sigmas with its sampler, as the library
    does; a file outside the DDPM's sigma range, or whose NFE does not fit its sampler, exits 2 with one
    line and writes nothing."""
    from diffguide.samplers.grid_file import write_grid_file
    from tests.helpers import run_cli

    folder = save_pipeline(tmp_path / "model", unet, diffusers.DDPMScheduler(), flat=True)
    model = load_diffusers(folder)
    lo, hi = model.process.sigma_min, model.process.sigma_max  # about 0.01 .. 157
    sigmas = torch.tensor([hi, 20.0, 3.0, 0.5, lo, 0.0], dtype=torch.float64)
    grid = write_grid_file(tmp_path / "g.json", sigmas, sampler="ipndm", nfe=5, process="ddpm")
    out = tmp_path / "s.npz"
    result = run_cli("sample", "--diffusers", str(folder), "--grid", str(grid), "--n", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = generate(model.denoiser, 3, model.shape, sigmas=sigmas, sampler="ipndm", seed=0)
    np.testing.assert_allclose(np.load(out)["samples"], expected.numpy(), rtol=1e-5, atol=1e-6)
    out.unlink()
    out.with_suffix(".png").unlink()
    # a grid of an EDM run (sigma 0.002..80) does not fit this DDPM's range; nor a file's own NFE
    edm = write_grid_file(tmp_path / "edm.json", torch.tensor([80.0, 1.0, 0.002, 0.0]), process="edm")
    nfe = write_grid_file(tmp_path / "nfe.json", sigmas, sampler="heun", nfe=4)
    for path, message in [
        (edm, f"spans sigma 0.002..80, outside the model's noise process (ddpm)'s range {lo:g}..{hi:g}: "
         "it was tuned for process 'edm'"),
        (nfe, "says nfe 4 for sampler 'heun', which takes 2 steps, but holds 5 steps"),
    ]:  # fmt: skip
        result = run_cli("sample", "--diffusers", str(folder), "--grid", str(path), "--out", str(out))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    assert not out.exists() and not out.with_suffix(".png").exists()
    result = run_cli(
        "sample", "--diffusers", str(folder), "--grid", str(grid), "--steps", "4", "--out", str(out)
    )
    assert result.returncode == 2 and "fixes the sigmas (5 steps); leave out --steps" in result.stderr


def test_cli_diffusers_errors(tmp_path, unet, capsys):
    from diffguide.cli import main

    folder = save_pipeline(tmp_path / "model", unet, diffusers.DDPMScheduler())
    out = str(tmp_path / "s.npz")
    cases = [
        (["sample", "runs/x", "--diffusers", str(folder)], "not both"),
        (["sample"], "give a run folder, or --diffusers DIR"),
        (["sample", "--diffusers", str(folder), "--class", "1"], "needs a class-conditional UNet2DModel"),
        (
            ["sample", "--diffusers", str(folder), "--guidance", "cfg"],
            "--guidance cfg of a diffusers model needs a UNet2DConditionModel",
        ),
        (["sample", "--diffusers", str(folder), "--guidance", "classifier"], "classifier is not available"),
        (["sample", "--diffusers", str(folder), "--raw"], "--raw is not available with --diffusers"),
        (["sample", "--diffusers", str(tmp_path / "missing")], "does not exist"),
    ]
    for argv, message in cases:
        assert main([*argv, "--n", "2", "--steps", "2", "--out", out]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert main(["sample", "--diffusers", str(folder), "--out", str(tmp_path / "s.txt")]) == 2
    assert "written as .npz" in capsys.readouterr().err


def test_cli_diffusers_class_labels_and_autoguidance(tmp_path, capsys):
    from diffguide.cli import main

    folder = save_pipeline(tmp_path / "cls", tiny_unet(num_class_embeds=3), diffusers.DDPMScheduler())
    guide = save_pipeline(
        tmp_path / "guide", tiny_unet(num_class_embeds=3, layers_per_block=2), diffusers.DDPMScheduler()
    )
    base = ["sample", "--diffusers", str(folder), "--n", "2", "--steps", "3", "--class", "2"]
    plain, guided = tmp_path / "plain.npz", tmp_path / "guided.npz"
    assert main([*base, "--out", str(plain)]) == 0
    assert np.load(plain)["labels"].tolist() == [2, 2]
    assert main([*base, "--guidance", "auto", "--guide", str(guide), "--w", "2", "--out", str(guided)]) == 0
    assert not np.allclose(np.load(plain)["samples"], np.load(guided)["samples"])
    assert main([*base[:-1], "7", "--out", str(plain)]) == 2
    assert "--class must be in 0..2, got 7" in capsys.readouterr().err


def test_cli_class_conditional_unet_needs_a_class(tmp_path, capsys):
    from diffguide.cli import main

    folder = save_pipeline(tmp_path / "cls", tiny_unet(num_class_embeds=3), diffusers.DDPMScheduler())
    assert main(["sample", "--diffusers", str(folder), "--n", "2", "--out", str(tmp_path / "s.npz")]) == 2
    assert (
        "class-conditional UNet2DModel (3 classes, num_class_embeds): pass --class K"
        in capsys.readouterr().err
    )


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A saved tiny UNet2DConditionModel (cross_attention_dim 8) and two embeddings [5, 8] as .npy files."""
    folder = save_pipeline(
        tmp_path_factory.mktemp("text") / "model", tiny_condition_unet(), diffusers.DDPMScheduler()
    )
    g = torch.Generator().manual_seed(0)
    files = {}
    for name in ("prompt", "null"):
        files[name] = folder.parent / f"{name}.npy"
        np.save(files[name], torch.randn(5, 8, generator=g).numpy())
    return folder, files


def _reference(model, denoiser, n=3, steps=3, seed=0):
    """The CLI's defaults (dpmpp-2m, Karras grid) through the library, for a given denoiser."""
    sigmas = sigma_grid("karras", steps, model.process)
    return generate(denoiser, n, model.shape, sigmas=sigmas, sampler="dpmpp-2m", seed=seed).numpy()


def test_cli_condition_unet_with_encoder_hidden_states(text_model, tmp_path):
    """--encoder-hidden-states FILE reaches the UNet2DConditionModel: CLI == library with that condition."""
    from safetensors.torch import save_file

    from diffguide.cli import main
    from diffguide.denoiser import FunctionDenoiser

    folder, files = text_model
    model = load_diffusers(folder)
    prompt, null = (torch.from_numpy(np.load(files[k]))[None] for k in ("prompt", "null"))  # [1, 5, 8]
    base = ["sample", "--diffusers", str(folder), "--n", "3", "--steps", "3"]

    def sample(*extra):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        assert main([*base, *extra, "--out", str(out)]) == 0
        return np.load(out)

    def conditioned(embedding):  # D(x, sigma) with a fixed embedding, whatever condition generate passes
        return FunctionDenoiser(lambda x, s, c: model.denoiser(x, s, embedding.expand(len(x), -1, -1)))

    plain = sample("--encoder-hidden-states", str(files["prompt"]))
    assert "labels" not in plain
    assert np.array_equal(plain["samples"], _reference(model, conditioned(prompt)))
    # [1, L, D] in a .safetensors file is the same condition
    save_file({"encoder_hidden_states": prompt.contiguous()}, str(tmp_path / "prompt.safetensors"))
    again = sample("--encoder-hidden-states", str(tmp_path / "prompt.safetensors"))
    assert np.array_equal(again["samples"], plain["samples"])
    other = sample("--encoder-hidden-states", str(files["null"]))
    assert not np.allclose(other["samples"], plain["samples"])  # the condition reaches the network

    # classifier-free guidance: D(null) + w (D(prompt) - D(null)), the null zeros by default
    for null_flags, null_embedding in (
        ([], torch.zeros_like(prompt)),
        (["--null-encoder-hidden-states", str(files["null"])], null),
    ):
        guided = sample(
            "--encoder-hidden-states", str(files["prompt"]), "--guidance", "cfg", "--w", "3", *null_flags
        )
        cond, uncond = conditioned(prompt), conditioned(null_embedding)
        expected = FunctionDenoiser(
            lambda x, s, c, cond=cond, uncond=uncond: uncond(x, s) + 3 * (cond(x, s) - uncond(x, s))
        )
        assert np.allclose(guided["samples"], _reference(model, expected), rtol=1e-5, atol=1e-5)
        assert not np.allclose(guided["samples"], plain["samples"])


def test_cli_condition_unet_errors(text_model, tmp_path, capsys):
    from diffguide.cli import main

    folder, files = text_model
    np.save(tmp_path / "wide.npy", np.zeros((5, 6), dtype=np.float32))
    np.save(tmp_path / "batch.npy", np.zeros((2, 5, 8), dtype=np.float32))
    plain = save_pipeline(tmp_path / "plain", tiny_unet(), diffusers.DDPMScheduler())
    prompt = ["--encoder-hidden-states", str(files["prompt"])]
    cases = [
        ([], "holds a UNet2DConditionModel, which needs a condition: pass --encoder-hidden-states FILE"),
        (
            ["--encoder-hidden-states", str(tmp_path / "wide.npy")],
            "has D = 6 but the model's cross-attention takes D = 8",
        ),
        (
            ["--encoder-hidden-states", str(tmp_path / "batch.npy")],
            "must have shape [L, D] or [1, L, D], got [2, 5, 8]",
        ),
        (["--encoder-hidden-states", str(tmp_path / "missing.npy")], "does not exist"),
        (["--encoder-hidden-states", str(tmp_path / "x.txt")], "takes a .npy or .safetensors file"),
        (
            [*prompt, "--null-encoder-hidden-states", str(files["null"])],
            "--null-encoder-hidden-states applies to --guidance cfg, cfg+auto, apg, cfg-zero*, tcfg, mambo-g, fdg or cfg++, not none",
        ),
        ([*prompt, "--null-encoder-hidden-states", str(tmp_path / "wide.npy"), "--guidance", "cfg"], "D = 6"),
        (
            [*prompt, "--guidance", "auto", "--guide", str(plain)],
            "is a UNet2DModel but the model a UNet2DConditionModel",
        ),
    ]
    for extra, message in cases:
        argv = [
            "sample",
            "--diffusers",
            str(folder),
            *extra,
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "s.npz"),
        ]
        assert main(argv) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert main(["sample", "--diffusers", str(plain), *prompt, "--out", str(tmp_path / "s.npz")]) == 2
    assert "--encoder-hidden-states is for a UNet2DConditionModel" in capsys.readouterr().err
