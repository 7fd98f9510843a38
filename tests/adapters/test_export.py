"""Export of a diffguide U-Net to a diffusers folder, checked by diffusers itself.

The reference is diffusers' own code: `UNet2DModel.from_pretrained` / `DDPMPipeline.from_pretrained` load
the folder, and their UNet must compute our network's output (eps, v or x0 prediction) on the same
input, and their DDPMScheduler loop must give our ddpm sampler's samples from the same noise; for a
flow run, FlowMatchEulerDiscreteScheduler's loop (and DDPMPipeline's, which is the same loop) must
give our Euler sampler's samples over the same flow times.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is needed to check the export")

from safetensors.torch import load_file  # noqa: E402

from diffguide import cli  # noqa: E402
from diffguide.adapters.diffusers import load_diffusers  # noqa: E402
from diffguide.adapters.export import export_problems, write_diffusers_folder  # noqa: E402
from diffguide.config import RunConfig, to_dict  # noqa: E402
from diffguide.denoiser import ProcessPrecond  # noqa: E402
from diffguide.errors import ConfigError  # noqa: E402
from diffguide.grids import spaced_sigmas  # noqa: E402
from diffguide.models.nets.unet import UNet, build_unet  # noqa: E402
from diffguide.processes import DDPM, EDMProcess, FlowProcess  # noqa: E402
from diffguide.samplers import sample_ddpm, sample_euler  # noqa: E402
from diffguide.samplers.generation import generate, sigma_grid  # noqa: E402
from diffguide.train.checkpoint import save_checkpoint  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: our zero-initialised output convs would make any two nets agree."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


def tiny_unet(**kwargs) -> UNet:
    # 16 and 32 channels (min(32, C/4) would give 4 and 8 groups): 8 groups everywhere; attention at
    # the 4x4 level (32 channels) and in the middle (32), one head of 32 channels each
    options = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), emb_dim=32)
    options.update(norm_groups=8, num_classes=3)
    options.update(kwargs)
    return randomised(UNet(3, 8, **options))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    net, process = tiny_unet(), DDPM()
    folder = write_diffusers_folder(net, process, "eps", (3, 8, 8), tmp_path_factory.mktemp("e") / "out")
    return net, process, folder


def test_diffusers_unet_computes_our_network(exported):
    net, _, folder = exported
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    # every weight came from the file: from_pretrained would silently initialise missing ones
    written = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(written) == set(unet.state_dict())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3])  # 3 is our null class, the last row of diffusers' embedding
    for t in (0, 10, 500, 999):
        with torch.no_grad():
            ours = net(x, torch.full((4,), float(t)), labels)
            theirs = unet(x, t, class_labels=labels).sample
        assert ours.abs().max() > 0.1  # a random net: not a trivially zero output
        assert (ours - theirs).abs().max() < 1e-5, t  # measured 6e-7


def test_pipeline_loop_gives_our_ddpm_samples(exported):
    """diffusers' DDPMPipeline loop with the exported scheduler == our ddpm sampler, same noise."""
    net, process, folder = exported
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipe.unet, diffusers.UNet2DModel)
    assert isinstance(pipe.scheduler, diffusers.DDPMScheduler)
    assert pipe.scheduler.config.prediction_type == "epsilon" and not pipe.scheduler.config.clip_sample
    # diffusers' float32 table of the same betas
    assert torch.allclose(pipe.scheduler.alphas_cumprod.double(), process.alpha_bar, rtol=0, atol=1e-6)
    steps, labels = 10, torch.tensor([1, 2])
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    pipe.scheduler.set_timesteps(steps)
    x, g = z.clone(), torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            eps = pipe.unet(x, t, class_labels=labels).sample
            x = pipe.scheduler.step(eps, t, x, generator=g).prev_sample
    sigmas = spaced_sigmas(steps, process, "leading")
    start = z * float((1 + sigmas[0] ** 2).sqrt())  # scale-free coordinates of the same x_T
    g = torch.Generator().manual_seed(5)  # same draws at the same steps (float32, as diffusers')
    ours = sample_ddpm(ProcessPrecond(net, process, "eps"), start, sigmas, cond=labels, generator=g)
    assert x.abs().max() > 0.1
    assert (ours - x).abs().max() < 1e-4 * max(1.0, float(x.abs().max()))


@pytest.mark.parametrize("target, prediction", [("v", "v_prediction"), ("x0", "sample")])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_scheduler_config_names_target_and_betas(tmp_path, target, prediction, schedule):
    process = DDPM(T=200, schedule=schedule, beta_start=2e-4, beta_end=0.03)
    folder = write_diffusers_folder(tiny_unet(), process, target, (3, 8, 8), tmp_path / "out")
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.prediction_type == prediction
    assert len(scheduler.alphas_cumprod) == 200
    assert torch.allclose(scheduler.alphas_cumprod.double(), process.alpha_bar, rtol=0, atol=1e-6)


def test_refusals_list_every_reason():
    ddpm = DDPM()
    assert export_problems(tiny_unet(), ddpm, "eps", (3, 8, 8)) == []
    assert export_problems(tiny_unet(), FlowProcess(), "velocity", (3, 8, 8)) == []
    attributes = tiny_unet(num_classes=0, num_types=2, num_accessories=3)
    cases = [
        (tiny_unet(norm_groups=0), ddpm, "eps", (3, 8, 8), ["GroupNorms have [4, 8, 12, 16] groups"]),
        (tiny_unet(attn_resolutions=(8,)), ddpm, "eps", (3, 8, 8), ["heads of [16, 32] channels"]),
        (tiny_unet(embedding="fourier"), ddpm, "eps", (3, 8, 8), ["FourierEmbedding"]),
        (tiny_unet(channel_mult=(2, 2)), ddpm, "eps", (3, 8, 8), ["noise embedding has 16 channels"]),
        (attributes, ddpm, "eps", (3, 8, 8), ["attribute"]),
        (tiny_unet(), ddpm, "eps", (3, 7, 7), ["7x7 but 2 levels need sizes divisible by 2"]),
        (tiny_unet(), EDMProcess(), "edm", (3, 8, 8), ["EDM-preconditioned", "noise process is 'edm'"]),
        (tiny_unet(), ddpm, "score", (3, 8, 8), ["target 'score'"]),
        (tiny_unet(), ddpm, "velocity", (3, 8, 8), ["target 'velocity' has no DDPMScheduler"]),
        (tiny_unet(), FlowProcess(), "eps", (3, 8, 8), ["flow run with target 'eps'"]),
        (tiny_unet(cond_map_channels=4), FlowProcess(), "velocity", (3, 8, 8), ["condition map of 4"]),
        (tiny_unet(cond_map_channels=4), ddpm, "eps", (3, 8, 8), ["condition map of 4"]),
        (attributes, FlowProcess(), "velocity", (3, 8, 8), ["attribute"]),
    ]
    for net, process, target, shape, reasons in cases:
        problems = export_problems(net, process, target, shape)
        assert len(problems) == len(reasons), problems
        for reason, problem in zip(reasons, problems):
            assert reason in problem, (reason, problems)


def test_refusal_writes_nothing_and_folder_must_be_new(tmp_path):
    with pytest.raises(ConfigError, match="GroupNorms") as info:
        write_diffusers_folder(tiny_unet(norm_groups=0), EDMProcess(), "edm", (3, 8, 8), tmp_path / "a")
    assert "EDM-preconditioned" in str(info.value)  # all reasons at once
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        write_diffusers_folder(tiny_unet(), DDPM(), "eps", (3, 8, 8), tmp_path / "b")


def make_run(folder, process="ddpm", target="eps", **model):
    """A run folder of randomly initialised weights (no training) on the 8x8 digits, class-conditional."""
    cfg = RunConfig(name="export-test")
    cfg.data.name, cfg.data.conditional = "digits", True
    cfg.model.arch, cfg.model.emb_dim = "unet", 64
    cfg.model.channel_mult, cfg.model.num_blocks, cfg.model.attn_resolutions = [1, 1], 1, [4]
    cfg.diffusion.process.name, cfg.diffusion.loss.target = process, target
    for key, value in model.items():
        setattr(cfg.model, key, value)
    net = build_unet(cfg, SimpleNamespace(shape=(1, 8, 8), num_classes=10))
    ema = {k: v.clone() for k, v in randomised(net, seed=0).state_dict().items()}
    raw = {k: v.clone() for k, v in randomised(net, seed=1).state_dict().items()}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(to_dict(cfg)))
    tensors = {**{f"ema.{k}": v for k, v in ema.items()}, **{f"model.{k}": v for k, v in raw.items()}}
    save_checkpoint(folder / "checkpoints", 1, tensors, {}, keep_last=1)
    return net, ema, raw


@pytest.fixture
def export_cli():
    """cli.main, which must list the export-diffusers command itself (no registration here)."""
    assert "export_diffusers" in cli.MODULES
    return cli.main


def test_cli_exports_a_run(tmp_path, export_cli, capsys):
    # 128 channels at both levels: min(32, C/4) gives 32 groups in every layer, no option needed
    net, ema, raw = make_run(tmp_path / "run", channels=128)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels, t = torch.tensor([0, 4, 10]), 321
    for flags, weights in (([], ema), (["--raw"], raw)):  # EMA weights by default
        out = tmp_path / f"out{len(flags)}"
        where = [str(out)] if flags else ["--out", str(out)]  # the positional and --out are the same
        assert export_cli(["export-diffusers", str(tmp_path / "run"), *where, *flags]) == 0
        assert "wrote" in capsys.readouterr().out
        unet = diffusers.DDPMPipeline.from_pretrained(out).unet.eval()
        assert unet.config.norm_num_groups == 32 and unet.config.num_class_embeds == 11
        net.load_state_dict(weights)
        with torch.no_grad():
            ours = net(x, torch.full((3,), float(t)), labels)
            theirs = unet(x, t, class_labels=labels).sample
        assert (ours - theirs).abs().max() < 1e-5 * max(1.0, float(ours.abs().max()))


def test_cli_wants_the_output_folder_once(tmp_path):
    from tests.helpers import run_cli

    make_run(tmp_path / "run", channels=128)
    for where in ([], [str(tmp_path / "a"), "--out", str(tmp_path / "b")]):
        result = run_cli("export-diffusers", str(tmp_path / "run"), *where)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0 and "give the output folder once" in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_refuses_a_run_that_does_not_map(tmp_path, export_cli, capsys):
    make_run(tmp_path / "run", channels=16, embedding="fourier")
    out = tmp_path / "out"
    assert export_cli(["export-diffusers", str(tmp_path / "run"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot be exported to diffusers" in err
    assert "GroupNorms have [4, 8] groups" in err and "FourierEmbedding" in err
    assert not out.exists()


# ---- rectified flow: UNet2DModel + FlowMatchEulerDiscreteScheduler ----


@pytest.fixture(scope="module")
def flow_exported(tmp_path_factory):
    """A class-conditional flow net (shift 3, a sigma range other than the default) and its folder."""
    net, process = tiny_unet(), FlowProcess(0.01, 50.0, shift=3.0)
    folder = write_diffusers_folder(net, process, "velocity", (3, 8, 8), tmp_path_factory.mktemp("f") / "out")
    return net, process, folder


def flow_sigmas_of(scheduler) -> torch.Tensor:
    """Our sigma grid at diffusers' flow times t (its `sigmas`): sigma = t / (1 - t). Its first t = 1 is
    sigma = inf, which scale-free coordinates cannot hold: 1e8 (t = 1 - 1e-8) stands for it, where the
    network's timestep 1000 t rounds to diffusers' 1000 in float32."""
    t = scheduler.sigmas.double()
    sigmas = t / (1 - t)
    sigmas[0] = 1e8
    return sigmas


def test_flow_scheduler_loop_gives_our_euler_samples(flow_exported):
    """diffusers' own loads and loop (set_timesteps, UNet, step) == our Euler sampler, same noise."""
    net, process, folder = flow_exported
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.shift == 3.0 and scheduler.config.num_train_timesteps == 1000
    written = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(written) == set(unet.state_dict())
    labels = torch.tensor([0, 2, 3])  # 3: our null class
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    scheduler.set_timesteps(6)
    x = noise.clone()  # diffusers starts at t = 1: x_1 = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            velocity = unet(x, t, class_labels=labels).sample
            x = scheduler.step(velocity, t, x).prev_sample
    sigmas = flow_sigmas_of(scheduler)
    denoiser = ProcessPrecond(net, process, "velocity")
    ours = sample_euler(denoiser, noise.double() * sigmas[0], sigmas, cond=labels)  # float64 steps
    assert float((x - noise).abs().mean()) > 0.1  # the loop moved the samples
    assert (ours - x.double()).abs().max() < 1e-5 * max(1.0, float(x.abs().max()))


def test_flow_folder_runs_in_diffusers_ddpm_pipeline(tmp_path):
    """DDPMPipeline.from_pretrained takes the folder, and its loop with the flow scheduler is our Euler."""
    net, process = tiny_unet(num_classes=0), FlowProcess(shift=2.0)
    folder = write_diffusers_folder(net, process, "velocity", (3, 8, 8), tmp_path / "out")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    seed = torch.Generator().manual_seed(1)
    images = pipe(batch_size=2, num_inference_steps=4, generator=seed, output_type="pt").images
    # images: (x / 2 + 0.5) clamped to [0, 1]; the pipeline's first draw is randn_tensor's torch.randn
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    pipe.scheduler.set_timesteps(4)
    sigmas = flow_sigmas_of(pipe.scheduler)
    ours = sample_euler(ProcessPrecond(net, process, "velocity"), noise.double() * sigmas[0], sigmas)
    inside = ((ours / 2 + 0.5) > 0.01) & ((ours / 2 + 0.5) < 0.99)
    assert inside.float().mean() > 0.2  # enough values the clamp leaves alone
    assert ((ours / 2 + 0.5).clamp(0, 1) - images.double()).abs().max() < 1e-5


def test_flow_folder_loads_back_as_the_same_denoiser(flow_exported):
    """load_diffusers rebuilds the run's flow process (shift and sigma range) and velocity target, and
    samples as our network does on every grid."""
    net, process, folder = flow_exported
    model = load_diffusers(folder)
    assert isinstance(model.process, FlowProcess) and model.target == "velocity"
    assert model.process.shift == 3.0
    assert (model.process.sigma_min, model.process.sigma_max) == (0.01, 50.0)
    labels = torch.tensor([1, 0, 3])
    for grid, sampler in (("flow-shift", "heun"), ("karras", "dpmpp-2m")):
        sigmas = sigma_grid(grid, 5, process)
        # float64 steps: only the two networks (float32 inside) differ, not the rounding at sigma 50
        kwargs = dict(sigmas=sigmas, sampler=sampler, seed=3, cond=labels, dtype=torch.float64)
        theirs = generate(model.denoiser, 3, model.shape, **kwargs)
        ours = generate(ProcessPrecond(net, process, "velocity"), 3, (3, 8, 8), **kwargs)
        assert float(ours.abs().max()) > 0.1
        assert (ours - theirs).abs().max() < 1e-5 * max(1.0, float(ours.abs().max())), grid


def test_cli_samples_an_exported_flow_run_like_the_run(tmp_path, export_cli, capsys):
    """export-diffusers on a flow run, then `sample --diffusers OUT` == the run's own denoiser, same options."""
    import numpy as np

    from diffguide.models.runs import load_run

    make_run(tmp_path / "run", process="flow", target="velocity", channels=128)
    out = tmp_path / "out"
    assert export_cli(["export-diffusers", str(tmp_path / "run"), str(out)]) == 0
    assert "FlowMatchEulerDiscreteScheduler" in capsys.readouterr().out
    options = ["--class", "4", "--n", "2", "--steps", "4", "--grid", "flow-shift", "--sampler", "euler"]
    options += ["--seed", "1", "--no-progress"]
    samples = tmp_path / "d.npz"
    assert export_cli(["sample", "--diffusers", str(out), *options, "--out", str(samples)]) == 0
    theirs = np.load(samples)["samples"]
    run = load_run(tmp_path / "run")  # EMA weights, as exported
    ours = generate(
        run.denoiser, 2, (1, 8, 8), sigmas=sigma_grid("flow-shift", 4, run.process), sampler="euler",
        seed=1, cond=torch.full((2,), 4),
    ).numpy()  # fmt: skip
    assert theirs.shape == (2, 1, 8, 8) and np.abs(ours).max() > 0.1
    assert np.abs(ours - theirs).max() < 1e-5 * max(1.0, float(np.abs(ours).max()))


def test_cli_refuses_a_flow_run_with_a_condition_map(tmp_path):
    """The real command in a subprocess: exit 2, one line per reason, nothing written."""
    make_run(tmp_path / "run", process="flow", target="velocity", channels=128, cond_map_channels=4)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    result = run_cli("export-diffusers", str(tmp_path / "run"), str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    run = str(tmp_path / "run")
    assert f"diffguide export-diffusers: error: run {run!r} cannot be exported" in result.stderr
    assert "condition map of 4 channels" in result.stderr and "model.cond_map_channels=0" in result.stderr
    assert not (tmp_path / "out").exists()
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
