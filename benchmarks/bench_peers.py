"""Peer benchmarks: diffguide against diffusers, k-diffusion and denoising-diffusion-pytorch, in one run.

1. Accuracy per cost. The exact denoiser of `tree_mixture()` (a GaussianMixture, float64) is sampled
   from the same noise x = 80 z by every deterministic sampler at 4, 8, 16, 32 denoiser evaluations
   (NFE); the error is the RMS distance to a 1024-step Heun solution from the same x.
   - diffguide and k-diffusion get the denoiser itself, D(x, sigma), on the Karras grid (rho 7,
     sigma 0.002 .. 80), and also on that grid without its sigma_min level (`open_karras_sigmas`,
     the grid diffusers' schedulers end up with here), so each library runs each grid it can.
   - diffusers' schedulers need an eps-prediction model on a discrete DDPM-like schedule. We give
     them a T = 10000 step schedule whose sigma(t) = sqrt((1 - abar_t) / abar_t) is the Karras ramp
     from 0.002 (t = 0) to 80 (t = T - 1), passed as `trained_betas` (and then as the exact float64
     `alphas_cumprod`, see `make_scheduler`), and the model
     `EpsModelFromDenoiser` (eps = (x - D(x, sigma(t))) / sigma(t) with x = x_t sqrt(1 + sigma^2)).
     Their uniform timestep spacings are then Karras grids in sigma, and every scheduler starts at
     t = T - 1 (sigma 80) from the same scale-free x (x_t = x / sqrt(1 + 80^2) for the VP-space
     schedulers). Default scheduler settings otherwise, except DDIM, which uses
     timestep_spacing="trailing": its default "leading" spacing starts at t = (n-1) T / n, not at
     sigma_max (Lin et al. 2023), so it would not solve the same problem. The multistep schedulers
     also run with use_karras_sigmas=True, which gives them our Karras grid including sigma_min.
     diffusers' IPNDMScheduler is different: it lives on v-diffusion's cosine-angle schedule and
     takes its grid from `trained_betas`, so it gets each of our two grids directly, with a v-model
     made from the denoiser (`diffguide.adapters.diffusers.ipndm_scheduler_sample`).
   k-diffusion's SDE / ancestral samplers run at eta = 0, where they are deterministic ODE solvers
   (sample_dpmpp_2s_ancestral, sample_dpmpp_sde, sample_dpmpp_2m_sde with both solver types,
   sample_dpmpp_3m_sde). Its adaptive sample_dpm_adaptive has no step count: its rtol is swept and
   each budget gets the most accurate run whose NFE fits (`dpm_adaptive_cells`). Stochastic samplers
   are judged by distribution metrics in bench_samplers.py instead.
   The figure docs/img/peers_accuracy.png plots error against NFE: each library's best row at each
   budget, and our main samplers.
2. Sampler overhead: wall time minus denoiser time per denoiser evaluation, for a cheap denoiser
   (2D `MLP(width=64, depth=2)` in `EDMPrecond`, 10,000 points, float32, 32 evaluations): our samplers, diffusers'
   scheduler loop (set_timesteps, scale_model_input, step) and k-diffusion's samplers. Medians of
   repeats, interleaved in one run.
3. Training throughput: a diffguide U-Net (`build_unet`) against denoising-diffusion-pytorch's
   `Unet(dim=32, dim_mults=(1, 2, 2))` at matched parameter count (our channel count is searched for
   the closest count; both counts and the mismatch are printed) on 24x24 RGB, eps-prediction DDPM loss, Adam, batch 32,
   samples/s over a fixed number of steps (forward + backward + optimizer step; no data loading, no
   EMA), medians of per-step times.

k-diffusion and denoising-diffusion-pytorch are installed with --no-deps (their torchvision,
accelerate, ema-pytorch and wandb dependencies cannot or need not be installed here); we import only
`k_diffusion.sampling` and `denoising_diffusion_pytorch.denoising_diffusion_pytorch`, with import-time
stand-ins for the missing packages (never called by the code we use).

All parts run with one torch thread by default (--threads): on a shared 2-core machine thread
hand-offs dominate small operations and make timings erratic.

Usage: python benchmarks/bench_peers.py [--quick] [--threads N] [--parts accuracy,overhead,training] [--out FILE]
By default all three parts run in one invocation and results/peers.md says so; --quick writes
results/peers-quick.md. A run of some parts replaces only their sections in an existing --out file,
keeps the others and says which were kept.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import math
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from diffguide import samplers as ours
from diffguide.denoiser import EDMPrecond
from diffguide.grids import karras_sigmas
from diffguide.mixtures import tree_mixture

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
BUDGETS = (4, 8, 16, 32)
# our deterministic samplers in the accuracy table (ddim equals euler: kept as a check)
OUR_ACCURACY_SAMPLERS = ("euler", "heun", "ddim", "dpmpp-2m", "dpmpp-3m", "unipc", "unipc-3", "ipndm")
T_TABLE = 10_000
RESULTS = Path(__file__).parent / "results" / "peers.md"
QUICK_RESULTS = RESULTS.with_name("peers-quick.md")  # a --quick smoke run never replaces the real results
ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "docs" / "img" / "peers_accuracy.png"
PARTS = ("accuracy", "overhead", "training")  # in the order of their numbered sections


# ---------------------------------------------------------------------------------------------
# importing the peers


def _stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    class Missing:
        def __init__(self, *args, **kwargs):
            raise ImportError(f"{name} is not installed; the benchmark only imports it, never uses it")

    module.__getattr__ = lambda attr: Missing
    return module


@contextlib.contextmanager
def _stand_ins(names):
    """Put import-time stand-ins in sys.modules for packages that are not installed, then remove them."""
    added = [n for n in names if n not in sys.modules and importlib.util.find_spec(n.split(".")[0]) is None]
    for name in added:
        sys.modules[name] = _stand_in(name)
    try:
        yield added
    finally:
        for name in added:
            sys.modules.pop(name, None)


def import_submodule(package: str, submodule: str, missing_ok: tuple[str, ...] = ()):
    """Import package.submodule without running package/__init__.py (which imports everything)."""
    full = f"{package}.{submodule}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ImportError(f"{package} is not installed")
    if package not in sys.modules:
        shell = types.ModuleType(package)
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        sys.modules[package] = shell
    with _stand_ins(missing_ok):
        return importlib.import_module(full)


TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.utils")


def k_diffusion_sampling():
    # torchdiffeq (log-likelihood) and torchsde (Brownian-tree noise) are only used by code we never call
    return import_submodule("k_diffusion", "sampling", (*TORCHVISION, "torchdiffeq", "torchsde"))


def ddpm_pytorch():
    return import_submodule(
        "denoising_diffusion_pytorch",
        "denoising_diffusion_pytorch",
        (*TORCHVISION, "ema_pytorch", "accelerate"),
    )


def version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(name)
    except PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------------------
# shared pieces


class Counted(nn.Module):
    """A denoiser that counts its evaluations and the seconds spent inside them."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.seconds = 0.0

    def forward(self, x, sigma, cond=None):
        start = time.perf_counter()
        out = self.inner(x, sigma, cond)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def open_karras_sigmas(n: int) -> torch.Tensor:
    """Karras grid of n + 1 levels with the last (sigma_min) dropped: n steps, the last from sigma_{n-1} to 0.

    This is the sigma grid diffusers' "linspace"/"trailing" multistep schedulers end up with on the
    Karras table below (their last step goes straight to 0 instead of spending an evaluation at 0.002).
    """
    return torch.cat(
        [karras_sigmas(n + 1, SIGMA_MIN, SIGMA_MAX, RHO)[:-2], torch.zeros(1, dtype=torch.float64)]
    )


def karras_table(T: int = T_TABLE) -> torch.Tensor:
    """alpha_bar [T] (float64) of a DDPM-like schedule whose sigma(t) is the Karras ramp, 0.002 at t = 0 to 80."""
    sigma = karras_sigmas(T, SIGMA_MIN, SIGMA_MAX, RHO)[:-1].flip(0)  # ascending in t
    return 1 / (1 + sigma**2)


def diffusers_schedulers():
    """(label, scheduler class, kwargs, works in sigma space, NFE for n steps)."""
    import diffusers as d

    return [
        (
            "DDIMScheduler (trailing)",
            d.DDIMScheduler,
            dict(timestep_spacing="trailing", set_alpha_to_one=True),
            False,
        ),
        ("EulerDiscreteScheduler", d.EulerDiscreteScheduler, {}, True),
        ("HeunDiscreteScheduler", d.HeunDiscreteScheduler, {}, True),
        ("DPMSolverMultistepScheduler (2M)", d.DPMSolverMultistepScheduler, {}, False),
        ("DPMSolverMultistepScheduler (3M)", d.DPMSolverMultistepScheduler, dict(solver_order=3), False),
        ("UniPCMultistepScheduler (bh2, order 2)", d.UniPCMultistepScheduler, {}, False),
        ("UniPCMultistepScheduler (bh2, order 3)", d.UniPCMultistepScheduler, dict(solver_order=3), False),
    ]


def make_scheduler(cls, kwargs, alpha_bar: torch.Tensor):
    """A diffusers scheduler on the table alpha_bar, given as trained_betas, then the exact float64 table.

    diffusers stores trained_betas in float32; near sigma = 0.002 the betas are ~1e-8, below float32's
    resolution of 1 - beta, which would distort sigma by percents. Replacing `alphas_cumprod` after
    construction gives every scheduler the exact schedule (they read it in set_timesteps and step).
    """
    betas = 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    names = inspect.signature(cls.__init__).parameters
    extra = {"clip_sample": False} if "clip_sample" in names else {}
    scheduler = cls(
        num_train_timesteps=len(betas),
        trained_betas=betas.tolist(),
        prediction_type="epsilon",
        **extra,
        **kwargs,
    )
    scheduler.alphas_cumprod = alpha_bar.clone()
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def diffusers_steps_for(label: str, evals: int) -> int:
    return max(1, (evals + 1) // 2) if label.startswith("Heun") else evals


@torch.no_grad()
def diffusers_sample(scheduler, eps_model, x, sigma_space: bool, steps: int):
    """The diffusers pipeline loop from scale-free x at the schedule's first timestep."""
    scheduler.set_timesteps(steps)
    sigma0 = eps_model.process.sigma(torch.as_tensor(scheduler.timesteps[0], dtype=torch.float64))
    sample = x if sigma_space else x / (1 + sigma0**2).sqrt()
    for t in scheduler.timesteps:
        eps = eps_model(scheduler.scale_model_input(sample, t), t, return_dict=False)[0]
        sample = scheduler.step(eps, t, sample).prev_sample
    return sample.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# 1. accuracy per cost


def accuracy(n_points: int = 2000, ref_steps: int = 1024, seed: int = 0, mixture=None):
    from diffguide.adapters.diffusers import EpsModelFromDenoiser, ipndm_scheduler_sample
    from diffguide.processes import DDPM

    mixture = tree_mixture() if mixture is None else mixture  # bench_grids.py also runs 8 Gaussians
    x = (
        torch.randn(n_points, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * SIGMA_MAX
    )
    reference = ours.sample_heun(mixture, x, karras_sigmas(ref_steps, SIGMA_MIN, SIGMA_MAX, RHO))
    finer = ours.sample_heun(mixture, x, karras_sigmas(2 * ref_steps, SIGMA_MIN, SIGMA_MAX, RHO))
    ref_error = float((finer - reference).pow(2).sum(1).mean().sqrt())

    def rms(sample):
        return float((sample.to(torch.float64) - reference).pow(2).sum(1).mean().sqrt())

    rows = []  # (library, sampler, {budget: (nfe, error)})

    def add(library, name, fn):
        cells = {}
        for budget in BUDGETS:
            counted = Counted(mixture)
            out = fn(counted, budget)
            cells[budget] = (counted.calls, rms(out))
        rows.append((library, name, cells))

    grids = {
        "": lambda steps: karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO),
        ", grid without the sigma_min step": open_karras_sigmas,
    }
    variants = [(name, name, {}) for name in OUR_ACCURACY_SAMPLERS]
    variants.append(("dpmpp-3m", "dpmpp-3m exact_third_order=True", {"exact_third_order": True}))
    variants.append(("ipndm", "ipndm max_order=3", {"max_order": 3}))
    variants.append(("ipndm", "ipndm extrapolate_final=True", {"extrapolate_final": True}))
    for suffix, grid in grids.items():
        for name, label, kwargs in variants:
            if suffix and name in ("euler", "ddim"):
                continue  # the open grid's rows are for the higher-order samplers
            sampler = ours.get_sampler(name)

            def run_ours(den, budget, sampler=sampler, name=name, grid=grid, kwargs=kwargs):
                return sampler(den, x.clone(), grid(ours.steps_for_evals(name, budget)), **kwargs)

            add("diffguide", label + suffix, run_ours)

    try:
        ks = k_diffusion_sampling()

        def no_noise(sigma, sigma_next):  # eta = 0 never uses it; avoids k-diffusion's torchsde import
            return 0.0

        eta0 = dict(eta=0.0, noise_sampler=no_noise)
        k_samplers = [  # (name, function, evaluations per step, options, also on the open grid)
            ("sample_euler", ks.sample_euler, 1, {}, False),
            ("sample_heun", ks.sample_heun, 2, {}, True),
            ("sample_dpm_2", ks.sample_dpm_2, 2, {}, False),
            ("sample_lms", ks.sample_lms, 1, {}, True),
            ("sample_dpmpp_2m", ks.sample_dpmpp_2m, 1, {}, True),
            # the SDE / ancestral samplers at eta = 0 are deterministic ODE solvers
            ("sample_dpmpp_2s_ancestral (eta 0)", ks.sample_dpmpp_2s_ancestral, 2, eta0, True),
            ("sample_dpmpp_sde (eta 0)", ks.sample_dpmpp_sde, 2, eta0, True),
            ("sample_dpmpp_2m_sde (eta 0)", ks.sample_dpmpp_2m_sde, 1, eta0, True),
            (
                "sample_dpmpp_2m_sde (eta 0, heun)",
                ks.sample_dpmpp_2m_sde,
                1,
                {**eta0, "solver_type": "heun"},
                True,
            ),
            ("sample_dpmpp_3m_sde (eta 0)", ks.sample_dpmpp_3m_sde, 1, eta0, True),
        ]
        for suffix in grids:
            for name, fn, per, kwargs, open_grid in k_samplers:
                if suffix and not open_grid:
                    continue

                def run_k(den, budget, fn=fn, per=per, kwargs=kwargs, suffix=suffix):
                    steps = (budget + 1) // 2 if per == 2 else budget
                    if suffix:
                        sigmas = open_karras_sigmas(steps)
                    else:
                        sigmas = ks.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX, RHO).double()
                    return fn(den, x.clone(), sigmas, disable=True, **kwargs)

                add("k-diffusion", name + suffix, run_k)

        def run_fast(den, budget):
            return ks.sample_dpm_fast(den, x.clone(), SIGMA_MIN, SIGMA_MAX, budget, disable=True)

        add("k-diffusion", "sample_dpm_fast (ends at sigma_min)", run_fast)
        cells, fewest = dpm_adaptive_cells(ks, mixture, x, rms)
        name = f"sample_dpm_adaptive (ends at sigma_min; rtol swept, fewest NFE {fewest})"
        rows.append(("k-diffusion", name, cells))
    except ImportError as e:
        rows.append(("k-diffusion", f"not available: {e}", {}))

    try:
        alpha_bar = karras_table()
        process = DDPM.from_alpha_bar(alpha_bar)
        schedulers = diffusers_schedulers()
        schedulers += [  # the multistep schedulers again, on our Karras grid (sigma_min included)
            (f"{label[:-1]}, Karras sigmas)", cls, {**kwargs, "use_karras_sigmas": True}, sigma_space)
            for label, cls, kwargs, sigma_space in schedulers
            if "Multistep" in label
        ]
        for label, cls, kwargs, sigma_space in schedulers:

            def run_diffusers(den, budget, cls=cls, kwargs=kwargs, sigma_space=sigma_space, label=label):
                scheduler = make_scheduler(cls, kwargs, alpha_bar)
                eps_model = EpsModelFromDenoiser(den, process)
                steps = diffusers_steps_for(label, budget)
                return diffusers_sample(scheduler, eps_model, x.clone(), sigma_space, steps)

            add("diffusers", label, run_diffusers)

        for suffix, grid in grids.items():

            def run_ipndm(den, budget, grid=grid):
                return ipndm_scheduler_sample(den, x.clone(), grid(budget))

            add("diffusers", "IPNDMScheduler (on our grid)" + suffix, run_ipndm)
    except ImportError as e:
        rows.append(("diffusers", f"not available: {e}", {}))
    return rows, ref_error


ADAPTIVE_RTOLS = tuple(10 ** (k / 4) for k in range(4, -25, -1))  # 10 .. 1e-6, loose first, 4 per decade


def dpm_adaptive_cells(ks, mixture, x, rms) -> tuple[dict, int]:
    """k-diffusion's sample_dpm_adaptive budgeted by NFE: per budget, the most accurate run whose NFE fits.

    Its step size is chosen by an error controller, so the NFE follows from the tolerance: we sweep
    rtol from loose to tight (atol = rtol * 0.156, its default ratio) for orders 2 and 3, with the
    default h_init 0.05, until a run needs more than the largest budget, and keep per budget the most
    accurate run with NFE <= budget. A budget no tolerance fits stays empty;
    returns (cells, the fewest NFE any run took).
    """
    runs = []  # (nfe, error)
    for order in (2, 3):
        for rtol in ADAPTIVE_RTOLS:
            counted = Counted(mixture)
            out = ks.sample_dpm_adaptive(
                counted,
                x.clone(),
                SIGMA_MIN,
                SIGMA_MAX,
                order=order,
                rtol=rtol,
                atol=rtol * 0.156,
                disable=True,
            )
            runs.append((counted.calls, rms(out)))
            if counted.calls > max(BUDGETS):  # tighter tolerances only cost more
                break
    cells = {}
    for budget in BUDGETS:
        fitting = [(error, nfe) for nfe, error in runs if nfe <= budget]
        if fitting:
            error, nfe = min(fitting)
            cells[budget] = (nfe, error)
    return cells, min(nfe for nfe, _ in runs)


def accuracy_table(rows, ref_error, n_points, ref_steps) -> str:
    lines = [
        f"RMS distance to the {ref_steps}-step Heun solution (from the same noise, {n_points} points of the "
        f"tree mixture, exact denoiser; the reference itself moves by {ref_error:.1e} when doubling its "
        "steps). NFE actually used in brackets where it differs from the budget. Best per budget in bold.",
        "",
        "Deterministic samplers only: the SDE and ancestral samplers appear here at eta = 0, where they "
        "are ODE solvers (k-diffusion's sample_euler_ancestral and sample_dpm_2_ancestral at eta = 0 take "
        "exactly sample_euler's and sample_dpm_2's steps, so they are not repeated). Stochastic samplers "
        "follow other paths from the same noise, so a distance to the ODE solution does not judge them; "
        "they are compared by distribution metrics (exact log-density, sliced W2) in "
        "benchmarks/bench_samplers.py (results/samplers.md) instead.",
        "",
        "| library | sampler | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " |",
        "|---|---|" + "---:|" * len(BUDGETS),
    ]
    best = {b: min((c[b][1] for _, _, c in rows if b in c), default=math.inf) for b in BUDGETS}
    best_ours = {b: min(c[b][1] for lib, _, c in rows if lib == "diffguide" and b in c) for b in BUDGETS}
    best_peer = {
        b: min((c[b][1] for lib, _, c in rows if lib != "diffguide" and b in c), default=math.inf)
        for b in BUDGETS
    }
    for library, name, cells in rows:
        if not cells:
            lines.append(f"| {library} | {name} |" + " |" * len(BUDGETS))
            continue
        out = []
        for b in BUDGETS:
            if b not in cells:  # an adaptive solver that needs more evaluations at any tolerance
                out.append("n/a")
                continue
            nfe, err = cells[b]
            text = f"{err:.2e}" + (f" ({nfe})" if nfe != b else "")
            out.append(f"**{text}**" if err == best[b] else text)
        lines.append(f"| {library} | {name} | " + " | ".join(out) + " |")
    lines += [
        "",
        "| | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " |",
        "|---|" + "---:|" * len(BUDGETS),
        "| best diffguide | " + " | ".join(f"{best_ours[b]:.2e}" for b in BUDGETS) + " |",
        "| best peer | " + " | ".join(f"{best_peer[b]:.2e}" for b in BUDGETS) + " |",
        "| ratio (ours / peer) | " + " | ".join(f"{best_ours[b] / best_peer[b]:.3f}" for b in BUDGETS) + " |",
        "",
    ]

    def best_name(budget, peer: bool) -> str:
        cands = [(c[budget][1], lib, n) for lib, n, c in rows if (lib != "diffguide") == peer and budget in c]
        _, lib, name = min(cands)
        return name if lib == "diffguide" else f"{lib} {name}"

    verdicts = {"ours better": [], "tie (within 1%)": [], "PEER BETTER": []}
    for b in BUDGETS:
        ratio = best_ours[b] / best_peer[b]
        better = "ours better" if ratio < 1 else "PEER BETTER"
        verdict = "tie (within 1%)" if abs(ratio - 1) <= 0.01 else better
        verdicts[verdict].append(str(b))
        lines.append(
            f"- NFE {b}: {verdict}: ours {best_name(b, False)} {best_ours[b]:.4e}, "
            f"best peer {best_name(b, True)} {best_peer[b]:.4e}."
        )
    summary = "; ".join(f"{v} at NFE {', '.join(bs)}" for v, bs in verdicts.items() if bs)
    lines += ["", f"**Summary: {summary}.** " + summary_text(rows, best_ours, best_peer, best_name)]
    return "\n".join(lines)


SAME = 1e-3  # rows whose errors agree this closely at every budget are taken for the same method


def same_method_groups(rows) -> list[list[str]]:
    """Rows of different libraries whose errors agree within SAME (relative) at every budget, grouped."""
    full = [(f"{lib} {name}" if lib != "diffguide" else f"our {name}", lib, c) for lib, name, c in rows]
    full = [r for r in full if all(b in r[2] for b in BUDGETS)]

    def same(a, b):
        return all(abs(a[2][k][1] / b[2][k][1] - 1) <= SAME and a[2][k][0] == b[2][k][0] for k in BUDGETS)

    groups = []
    for row in full:
        for group in groups:
            if same(row, group[0]):
                group.append(row)
                break
        else:
            groups.append([row])
    return [[r[0] for r in g] for g in groups if len({r[1] for r in g}) > 1]


def summary_text(rows, best_ours, best_peer, best_name) -> str:
    """The verdicts explained from this run's numbers (nothing here is fixed text about results)."""
    groups = same_method_groups(rows)
    parts = []
    if groups:
        parts.append(
            f"Rows of different libraries that agree within {SAME:.1%} at every budget (with the same "
            "NFE), i.e. the same method on the same grid: "
            + "; ".join(" = ".join(g) for g in groups)
            + ". Where such rows differ in the last digits, that is float32 arithmetic in diffusers' steps "
            "and grids (docs/interop.md). "
            "Parity with diffusers is tested (tests/samplers/test_diffusers_parity.py); agreement with k-diffusion "
            "is only measured here (k-diffusion is a benchmark-only dependency)."
        )
    for b in BUDGETS:
        ours_name, peer_name = best_name(b, False), best_name(b, True)
        ratio = best_ours[b] / best_peer[b]
        if abs(ratio - 1) <= 0.01:
            parts.append(
                f"At NFE {b} our best ({ours_name}) and the best peer ({peer_name}) are within 1%"
                + (
                    f" (relative difference {abs(ratio - 1):.1e}: the same computation)."
                    if abs(ratio - 1) <= SAME
                    else "."
                )
            )
        else:
            matched = any(f"our {ours_name}" in g for g in groups)
            parts.append(
                f"At NFE {b} our best ({ours_name}, {best_ours[b]:.3e}) is {abs(1 - ratio):.0%} "
                + ("more" if ratio < 1 else "LESS")
                + f" accurate than the best peer ({peer_name}, {best_peer[b]:.3e})"
                + ("." if matched else f"; no peer row matches that row within {SAME:.1%} at every budget.")
            )
    return " ".join(parts)


def best_rows(rows):
    """Per library, the row with the lowest geometric-mean error over the budgets."""
    best = {}
    for library, name, cells in rows:
        if not all(b in cells for b in BUDGETS):
            continue
        score = sum(math.log(cells[b][1]) for b in BUDGETS)
        if library not in best or score < best[library][0]:
            best[library] = (score, name, cells)
    return {library: (name, cells) for library, (_, name, cells) in best.items()}


def accuracy_plot(rows, path: Path) -> Path:
    """Error against NFE (log-log): each library's best per budget, and our main samplers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    open_suffix = ", grid without the sigma_min step"
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=130)

    def envelope(library):
        """Per budget: (error, row name) of the library's most accurate row."""
        lib_rows = [(name, cells) for lib, name, cells in rows if lib == library and cells]
        if not lib_rows:
            return None
        return [min((cells[b][1], name) for name, cells in lib_rows if b in cells) for b in BUDGETS]

    # our main samplers, thin, each on the grid with the lower geometric-mean error (no option variants)
    ours_best = {}
    for library, name, cells in rows:
        key = name.split(",")[0]
        if library != "diffguide" or not cells or " " in key or key in ("euler", "ddim", "dpmpp-3m"):
            continue
        score = sum(math.log(cells[b][1]) for b in BUDGETS)
        if key not in ours_best or score < ours_best[key][0]:
            ours_best[key] = (score, name, cells)
    colors = plt.get_cmap("tab10").colors
    for k, (_, name, cells) in enumerate(sorted(ours_best.values(), key=lambda v: v[1])):
        label = "diffguide " + name.replace(open_suffix, " (open grid)")
        ax.loglog(
            BUDGETS,
            [cells[b][1] for b in BUDGETS],
            "o-",
            color=colors[k % 10],
            lw=1,
            ms=3.5,
            alpha=0.6,
            label=label,
        )
    # each library's best per budget: peers as wide pale bands, ours on top
    for library, color, marker in (("k-diffusion", "tab:gray", "s"), ("diffusers", "black", "^")):
        best = envelope(library)
        if best:
            ax.loglog(BUDGETS, [e for e, _ in best], color=color, marker=marker, lw=7, alpha=0.22, ms=13,
                      label=f"{library}: best of its samplers at each budget")  # fmt: skip
    best = envelope("diffguide")
    ax.loglog(BUDGETS, [e for e, _ in best], "D-", color="tab:red", lw=2.4, ms=7,
              label="diffguide: best of its samplers at each budget")  # fmt: skip
    for b, (error, name) in zip(BUDGETS, best):
        short = name.replace(open_suffix, "*").replace("extrapolate_final=True", "extrap.")
        ax.annotate(short, (b, error), textcoords="offset points", xytext=(6, 6), fontsize=7, color="tab:red")
    ax.xaxis.set_major_locator(FixedLocator(BUDGETS))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(b) for b in BUDGETS]))
    ax.xaxis.set_minor_locator(NullLocator())
    y_ticks = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    ax.yaxis.set_major_locator(FixedLocator(y_ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:g}" for t in y_ticks]))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("denoiser evaluations (NFE)")
    ax.set_ylabel("RMS error vs 1024-step Heun (lower is better)")
    ax.set_title("Tree mixture, exact denoiser: accuracy per evaluation budget", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.text(
        0.99,
        0.02,
        "* and (open grid): the Karras grid without its sigma_min level (last step from sigma_{n-1} to 0);\n"
        "thin lines: diffguide's samplers with default options, each on whichever grid gives the lower error",
        ha="right",
        va="bottom",
        fontsize=7.5,
        color="0.3",
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# 2. sampler overhead


def overhead(n_points: int = 10_000, evals: int = 32, repeats: int = 15, seed: int = 0):
    from diffguide.adapters.diffusers import EpsModelFromDenoiser
    from diffguide.models.nets.mlp import MLP
    from diffguide.processes import DDPM

    torch.manual_seed(seed)
    denoiser = EDMPrecond(MLP(dim=2, width=64, depth=2), sigma_data=0.5).eval()
    x0 = torch.randn(n_points, 2, generator=torch.Generator().manual_seed(seed)) * SIGMA_MAX
    contenders = []  # (library, name, fn(counted) -> None, wrapper timer or None)

    for name in ("euler", "heun", "ddim", "dpmpp-2m"):
        sampler = ours.get_sampler(name)
        steps = ours.steps_for_evals(name, evals)
        sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO)
        contenders.append(("diffguide", name, lambda den, s=sampler, g=sigmas: s(den, x0.clone(), g), None))

    try:
        ks = k_diffusion_sampling()
        for name, fn, per in (
            ("sample_euler", ks.sample_euler, 1),
            ("sample_heun", ks.sample_heun, 2),
            ("sample_dpmpp_2m", ks.sample_dpmpp_2m, 1),
        ):
            steps = (evals + 1) // 2 if per == 2 else evals
            sigmas = ks.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX, RHO)
            contenders.append(
                ("k-diffusion", name, lambda den, f=fn, g=sigmas: f(den, x0.clone(), g, disable=True), None)
            )
    except ImportError:
        pass

    try:
        alpha_bar = karras_table(1000)
        process = DDPM.from_alpha_bar(alpha_bar)
        for label, cls, kwargs, sigma_space in diffusers_schedulers():
            if "3" in label:  # the order-3 variants cost the same as order 2
                continue
            scheduler = make_scheduler(cls, kwargs, alpha_bar)
            steps = diffusers_steps_for(label, evals)
            timer = SimpleNamespace(seconds=0.0)

            def run(
                den, scheduler=scheduler, process=process, steps=steps, sigma_space=sigma_space, timer=timer
            ):
                eps_model = TimedEps(EpsModelFromDenoiser(den, process), timer)
                diffusers_sample(scheduler, eps_model, x0.clone(), sigma_space, steps)

            contenders.append(("diffusers", label, run, timer))
    except ImportError:
        pass

    samples = {(lib, name): ([], [], []) for lib, name, _, _ in contenders}
    for _ in range(repeats):  # interleaved, so slow phases of a shared machine hit everyone alike
        for library, name, fn, timer in contenders:
            counted = Counted(denoiser)
            if timer is not None:
                timer.seconds = 0.0
            start = time.perf_counter()
            with torch.no_grad():
                fn(counted)
            wall = time.perf_counter() - start
            total, model, wrapper = samples[(library, name)]
            total.append(wall / counted.calls)
            model.append(counted.seconds / counted.calls)
            wrapper.append((timer.seconds if timer is not None else counted.seconds) / counted.calls)
    rows = []
    for library, name, _, _ in contenders:
        total, model, wrapper = samples[(library, name)]
        per_eval = [t - m for t, m in zip(total, model)]
        scheduler_only = [t - w for t, w in zip(total, wrapper)]
        rows.append(
            (
                library,
                name,
                statistics.median(total) * 1e3,
                statistics.median(model) * 1e3,
                statistics.median(per_eval) * 1e6,
                statistics.median(scheduler_only) * 1e6,
            )
        )
    return rows


class TimedEps(nn.Module):
    """Times a whole eps-model call (denoiser + the eps/VP conversions) for diffusers' scheduler-only cost."""

    def __init__(self, eps_model, timer):
        super().__init__()
        self.eps_model, self.timer, self.process = eps_model, timer, eps_model.process

    def forward(self, sample, timestep, cond=None, return_dict=True):
        start = time.perf_counter()
        out = self.eps_model(sample, timestep, cond, return_dict=return_dict)
        self.timer.seconds += time.perf_counter() - start
        return out


def overhead_table(rows, n_points, evals, repeats) -> str:
    lines = [
        f"Per denoiser evaluation, {evals} evaluations, {n_points} 2D points, float32, median of {repeats} "
        "interleaved repeats. Overhead = wall time minus time inside the denoiser (`EDMPrecond(MLP(dim=2, "
        "width=64, depth=2))`). For "
        "diffusers the eps-model wrapper (t -> sigma lookup, VP scaling, eps = (x - D) / sigma) is part "
        "of the overhead; the last column subtracts it too (scheduler code only).",
        "",
        "| library | sampler | wall ms/eval | denoiser ms/eval | overhead µs/eval | scheduler-only µs/eval |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for library, name, total, model, per_eval, scheduler_only in rows:
        lines.append(
            f"| {library} | {name} | {total:.2f} | {model:.2f} | {per_eval:.0f} | "
            + (f"{scheduler_only:.0f}" if library == "diffusers" else "same")
            + " |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 3. training throughput


def our_unet(channels=32, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(6,)):
    from diffguide.config import RunConfig
    from diffguide.models.nets.unet import build_unet

    cfg = RunConfig()
    cfg.model.arch = "unet"
    cfg.model.channels = channels
    cfg.model.channel_mult = list(channel_mult)
    cfg.model.num_blocks = num_blocks
    cfg.model.attn_resolutions = list(attn_resolutions)
    return build_unet(cfg, SimpleNamespace(shape=(3, 24, 24), num_classes=0))


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


THEIR_DIM = 32  # denoising-diffusion-pytorch's Unet(dim=32, dim_mults=(1, 2, 2)): 1,412,867 parameters
OUR_CHANNELS = range(8, 129, 2)  # searched for the closest parameter count


def matched_channels(target: int) -> int:
    """Our model.channels (mult 1,2,2, 2 blocks, attention at 6x6) whose parameter count is closest to target."""
    counts = {}
    for channels in OUR_CHANNELS:
        try:
            counts[channels] = parameters(our_unet(channels=channels))
        except (ValueError, RuntimeError):  # attention heads must divide the channel count
            continue
    return min(counts, key=lambda c: abs(counts[c] - target))


def training(steps: int = 10, warmup: int = 2, batch: int = 32, seed: int = 0):
    """Rows (library, network, parameters, samples/s, ms/step) at matched parameter count."""
    from diffguide.denoiser import ProcessPrecond
    from diffguide.losses import DenoisingLoss, LossConfig
    from diffguide.processes import DDPM

    dd = ddpm_pytorch()  # ImportError: the caller reports the part as not run
    torch.manual_seed(seed)
    theirs = dd.Unet(dim=THEIR_DIM, dim_mults=(1, 2, 2), channels=3)
    channels = matched_channels(parameters(theirs))
    unet = our_unet(channels=channels)
    process = DDPM()
    denoiser = ProcessPrecond(unet, process, "eps")
    loss_fn = DenoisingLoss(LossConfig(target="eps", noise_sampling="uniform-t"), process)
    generator = torch.Generator().manual_seed(seed)
    diffusion = dd.GaussianDiffusion(theirs, image_size=24, timesteps=1000, objective="pred_noise")

    def our_step(opt, data):
        loss = loss_fn(denoiser, data * 2 - 1, None, generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def their_step(opt, data):
        loss = diffusion(data)  # their forward normalises [0, 1] data to [-1, 1] itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    contenders = [
        ("diffguide", f"build_unet (channels {channels}, mult 1,2,2, 2 blocks, attn at 6x6)", unet, our_step),
        (
            "denoising-diffusion-pytorch",
            f"Unet (dim {THEIR_DIM}, mults 1,2,2, default attention)",
            theirs,
            their_step,
        ),
    ]
    times = {label: [] for _, label, _, _ in contenders}
    opts = {label: torch.optim.Adam(m.parameters(), lr=2e-4) for _, label, m, _ in contenders}
    data = torch.rand(batch, 3, 24, 24, generator=torch.Generator().manual_seed(seed))
    for i in range(warmup + steps):  # interleaved step by step
        for _, label, module, step in contenders:
            module.train()
            start = time.perf_counter()
            step(opts[label], data)
            if i >= warmup:
                times[label].append(time.perf_counter() - start)
    rows = []
    for library, label, module, _ in contenders:
        median = statistics.median(times[label])
        rows.append((library, label, parameters(module), batch / median, median * 1e3))
    return rows


def training_table(rows, steps, batch) -> str:
    lines = [
        f"24x24 RGB, batch {batch}, eps-prediction DDPM loss, Adam, float32 on the CPU; median of {steps} "
        "interleaved steps after warm-up (forward + backward + optimizer step).",
        "",
        "| library | network | parameters | samples/s | ms/step |",
        "|---|---|---:|---:|---:|",
    ]
    for library, label, params, rate, ms in rows:
        lines.append(f"| {library} | {label} | {params:,} | {rate:.1f} | {ms:.0f} |")
    (_, _, ours, our_rate, _), (_, _, theirs, their_rate, _) = rows
    lines += [
        "",
        f"Parameters: ours {ours:,}, theirs {theirs:,}, mismatch {ours / theirs - 1:+.1%} (our channel count "
        f"is searched over {OUR_CHANNELS.start}..{OUR_CHANNELS.stop - 1} for the closest count to their "
        f"dim {THEIR_DIM}). Throughput ratio ours / theirs: {our_rate / their_rate:.2f}.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats (a smoke run)")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument(
        "--out",
        default=None,
        help=f"markdown file to write (default {RESULTS.name}, with --quick {QUICK_RESULTS.name}; '' for none)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every part (default 1)")
    parser.add_argument(
        "--plot", default=None, help=f"accuracy figure (default {PLOT}, none with --quick; '' for none)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"unknown part(s) {sorted(parts - set(PARTS))}; choices: {', '.join(PARTS)}")
    quick = args.quick
    out_file = args.out if args.out is not None else str(QUICK_RESULTS if quick else RESULTS)
    seconds = {}
    sections = [
        "# Peer benchmarks",
        "",
        f"Generated by `benchmarks/bench_peers.py` on {platform.machine()} / {platform.system()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, diffusers {version('diffusers')}, "
        f"k-diffusion {version('k-diffusion')}, denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}, einops {version('einops')}. "
        "See the module docstring for exactly how the same denoiser is fed to each library.",
    ]
    if "accuracy" in parts:
        n_points, ref_steps = (300, 256) if quick else (2000, 1024)
        start = time.perf_counter()
        rows, ref_error = accuracy(n_points, ref_steps)
        sections += [
            "",
            "## 1. Accuracy per cost (tree mixture, exact denoiser)",
            "",
            accuracy_table(rows, ref_error, n_points, ref_steps),
        ]
        plot = args.plot if args.plot is not None else ("" if quick else str(PLOT))
        if plot:
            accuracy_plot(rows, Path(plot))
            sections += [
                "",
                f"Figure: `{Path(plot).relative_to(ROOT) if Path(plot).is_relative_to(ROOT) else plot}`.",
            ]
        seconds["accuracy"] = time.perf_counter() - start
        print(f"accuracy: {seconds['accuracy']:.0f} s", file=sys.stderr)
    if "overhead" in parts:
        n_points, repeats = (2000, 3) if quick else (10_000, 15)
        start = time.perf_counter()
        rows = overhead(n_points, 32, repeats)
        sections += ["", "## 2. Sampler overhead", "", overhead_table(rows, n_points, 32, repeats)]
        seconds["overhead"] = time.perf_counter() - start
        print(f"overhead: {seconds['overhead']:.0f} s", file=sys.stderr)
    if "training" in parts:
        steps = 3 if quick else 10
        start = time.perf_counter()
        try:
            rows = training(steps=steps)
            table = training_table(rows, steps, 32)
        except ImportError as e:
            table = f"not run: {e}"
        sections += ["", "## 3. Training throughput (U-Net, 24x24 RGB)", "", table]
        seconds["training"] = time.perf_counter() - start
        print(f"training: {seconds['training']:.0f} s", file=sys.stderr)
    timing = ", ".join(f"{part} {seconds[part]:.0f} s" for part in PARTS if part in seconds)
    command = "python benchmarks/bench_peers.py" + (" --quick" if quick else "")
    if parts == set(PARTS):
        what = f"All three parts below were measured in this one run (`{command}`; {timing})."
    else:
        what = f"This run (`{command} --parts {args.parts}`) measured {timing}."
    sections[2] += " " + what + (" **Quick smoke run: fewer points, repeats and steps.**" if quick else "")
    text = "\n".join(sections) + "\n"
    if out_file:
        out = Path(out_file)
        if out.is_file() and parts != set(PARTS):
            text = merge_sections(out.read_text(), text, parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """(text before the first '## ' heading, {heading line: section text including the heading})."""
    head, sections, current = [], {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            current = line.strip()
            sections[current] = ""
        if current is None:
            head.append(line)
        else:
            sections[current] += line
    return "".join(head), sections


def merge_sections(old: str, new: str, parts: set[str]) -> str:
    """The new header and the sections just run, with the other sections of the old file kept."""
    _, old_sections = split_sections(old)
    head, new_sections = split_sections(new)
    merged = []
    for number, part in enumerate(PARTS, 1):
        pick = new_sections if part in parts else old_sections
        merged += [text for heading, text in pick.items() if heading.startswith(f"## {number}.")]
    note = (
        f"Sections of parts other than {', '.join(sorted(parts))} are kept from an earlier run of this script "
        "(`--parts` replaces only the sections it runs).\n\n"
    )
    return (
        head.rstrip("\n")
        + "\n\n"
        + note
        + "".join(s.rstrip("\n") + "\n\n" for s in merged).rstrip("\n")
        + "\n"
    )


if __name__ == "__main__":
    print(main())
