"""Sigma grids tuned to the model: the steps that minimise a sampler's error for this denoiser.

Two methods from the literature, both measured against reference trajectories of the
probability-flow ODE (Heun with many small steps) from the same noise:

- "gits": GITS, Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"
  (ICML 2024), Algorithm 1: a cost matrix of one-step local errors between the levels of a fine grid,
  measured from a few reference trajectories, then dynamic programming for the cheapest path of
  exactly `steps` steps. Its cost is the local error of the sampler's first step (the DDIM/Euler step
  for the multistep samplers, as in the paper); it ignores how errors carry over between steps.
- "direct": a gradient-free search over the grid itself (Align Your Steps, Sabour et al. 2024,
  optimise the steps directly; here the objective is the end-point error of the full sampler,
  history included, against the reference, as in the optimal time-step schedules of Xue et al. 2024,
  "Accelerating Diffusion Sampling with Optimized Time Steps"), coarse to fine: (1) the best grids
  of the Karras family (rho and the smallest level scanned); (2) from the best of rho = 3 and of
  rho = 7, a Nelder-Mead search (Nelder & Mead 1965) over a smooth shape family:
  the smallest level and the log-sigma step sizes as a piecewise-linear function of the step index
  (SHAPE_KNOTS knots); (3) from the better end, a coordinate search of every level in log sigma with
  shrinking steps, each level kept between its neighbours so the grid stays strictly descending, and
  relocations of the most crowded level to another step (which coordinate moves cannot do). A
  coordinate search alone, from several Karras-family starts, stalled in local optima with many
  levels (tree mixture, ipndm, 32 evaluations: 9.6e-03; shape search first: 1.1e-03).
- "gits+direct" (the default): both, and the direct search started from the GITS grid too.
Whichever grid (the baseline Karras grid, GITS, the searched ones) has the lowest error on separate
validation samples is kept, so the result is never worse than the baseline on those samples.

The samplers are run as they are (plain functions); the denoiser is any denoiser, guided or not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize

from diffguide.errors import ConfigError, lookup
from diffguide.grids import karras_sigmas
from diffguide.noise import PerSampleNoise
from diffguide.samplers.registry import SAMPLERS, STOCHASTIC, get_sampler, steps_for_evals
from diffguide.samplers.single_step import sample_heun

DEFAULT_SAMPLES, DEFAULT_MAX_EVALS = 256, 300  # tuning draws and search budget per start (2D-sized)

METHODS = {
    "gits+direct": "both, and the direct search from the GITS grid too; the best on validation samples is kept",
    "gits": "GITS (Chen et al. 2024): dynamic programming over a fine grid on local errors",
    "direct": "direct search on the end-point error: Karras family, then a shape family, then every level",
}


class _Counted:
    """A denoiser that reports each evaluation: progress(done, total), total raised to done if passed."""

    def __init__(self, denoiser, progress: Callable[[int, int], None], total: int):
        self.denoiser, self.progress, self.total, self.done = denoiser, progress, total, 0

    def __call__(self, x, sigma, cond=None):
        out = self.denoiser(x, sigma, cond)
        self.done += 1
        self.total = max(self.total, self.done)
        self.progress(self.done, self.total)
        return out


def evaluation_budget(method: str, nfe: int, steps: int, levels: int, substeps: int, max_evals: int) -> int:
    """An upper bound of tune_grid's denoiser evaluations (for a progress bar's total and ETA): the
    reference trajectories, the GITS cost matrix, each search's objective budget, the validation."""
    per_step = max(1, math.ceil(nfe / steps))
    total = 2 * ((levels - 1) * substeps * 2 + 1)  # Heun, tuning and validation; one more to sigma 0
    candidates = 1
    if method in ("gits", "gits+direct"):
        total += (levels - 1) + (per_step - 1) * levels * (levels - 1) // 2  # first evaluations cached
        candidates += 1
    if method in ("direct", "gits+direct"):
        searches = len(RHOS) * 6 + 2 * (max_evals + 100) + 3 * max_evals  # family, shapes, levels
        searches += max_evals if method == "gits+direct" else 0
        total += searches * nfe
        candidates += 2 if method == "gits+direct" else 1
    return total + candidates * nfe


@dataclass
class TunedGrid:
    """A tuned grid and how it was found: errors are RMS end-point distances on validation samples."""

    sigmas: torch.Tensor  # [steps + 1], descending, ending in 0
    sampler: str
    nfe: int
    steps: int
    method: str  # the method asked for
    chosen: str  # the candidate kept: "karras", "gits", "direct" or "gits+direct" (search from GITS)
    error_before: float  # the baseline (Karras) grid
    error_after: float  # the grid kept
    errors: dict[str, float] = field(default_factory=dict)  # every candidate's validation error
    grids: dict[str, torch.Tensor] = field(default_factory=dict)  # every candidate grid
    seconds: float = 0.0
    samples: int = 0
    seed: int = 0
    baseline: str = ""


def check_tunable(sampler: str, nfe: int) -> int:
    """The number of steps for `nfe` evaluations of a deterministic `sampler`, or the error saying why not."""
    get_sampler(sampler)  # unknown names: the standard error with the closest names
    if sampler in STOCHASTIC:
        deterministic = sorted(s for s in SAMPLERS if s not in STOCHASTIC)
        raise ConfigError(
            f"sampler {sampler!r} is stochastic: a grid is tuned against the probability-flow ODE's "
            f"solution, which needs a deterministic sampler; choices: {', '.join(deterministic)}"
        )
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ConfigError(f"the number of denoiser evaluations (NFE) must be an integer >= 1, got {nfe!r}")
    return steps_for_evals(sampler, nfe)


def reference_states(denoiser, x, levels: torch.Tensor, *, cond=None, substeps: int = 8) -> list:
    """x at each of `levels` (descending, ending in 0) by Heun (EDM Alg. 2) with `substeps` log-spaced
    steps per level; the last level, 0, is reached through sigmas down to levels[-2] / 1e4.

    Returns [len(levels)] tensors shaped like x (x itself first)."""
    states = [x]
    for a, b in zip(levels[:-1].tolist(), levels[1:].tolist()):
        lo = b if b > 0 else a * 1e-4
        inner = torch.exp(torch.linspace(math.log(a), math.log(lo), substeps + 1, dtype=torch.float64))
        grid = inner if b > 0 else torch.cat([inner, inner.new_zeros(1)])
        states.append(sample_heun(denoiser, states[-1], grid, cond=cond))
    return states


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square over samples of the per-sample Euclidean distance."""
    return float((a - b).to(torch.float64).pow(2).flatten(1).sum(1).mean().sqrt())


class _RepeatCache:
    """A denoiser that returns its last output again for the same (x, sigma): the GITS cost matrix
    steps from each reference state to every later level, and all those steps start with one call."""

    def __init__(self, denoiser):
        self.denoiser, self.last = denoiser, None

    def __call__(self, x, sigma, cond=None):
        if self.last is not None:
            x0, s0, out = self.last
            if x0.shape == x.shape and torch.equal(s0, sigma) and torch.equal(x0, x):
                return out
        out = self.denoiser(x, sigma, cond)
        self.last = (x.clone(), sigma.clone(), out)
        return out


def gits_costs(sampler_fn, denoiser, states: list, levels: torch.Tensor, *, cond=None) -> torch.Tensor:
    """GITS cost matrix (Chen et al. 2024, eq. 9): cost[i, j] = RMS error of one sampler step from the
    reference state at levels[i] to levels[j], against the reference there; inf for j <= i."""
    m = len(levels)
    cost = torch.full((m, m), math.inf, dtype=torch.float64)
    cached = _RepeatCache(denoiser)
    for i in range(m - 1):
        for j in range(i + 1, m):
            out = sampler_fn(cached, states[i], levels[[i, j]], cond=cond)
            cost[i, j] = rms(out, states[j])
    return cost


def cheapest_path(cost: torch.Tensor, steps: int) -> list[int]:
    """Dynamic programming (GITS, Chen et al. 2024, Alg. 1): node indices 0 = k_0 < ... < k_steps = m - 1
    minimising sum cost[k_t, k_t+1] over paths of exactly `steps` steps."""
    m = cost.shape[0]
    if not 1 <= steps <= m - 1:
        raise ConfigError(f"a path of {steps} steps needs 1..{m - 1} steps on {m} levels")
    best = torch.full((steps + 1, m), math.inf, dtype=torch.float64)  # best[t, k]: t steps, ending at k
    back = torch.zeros((steps + 1, m), dtype=torch.long)
    best[0, 0] = 0.0
    for t in range(1, steps + 1):
        totals = best[t - 1][:, None] + cost  # [from, to]
        best[t], back[t] = totals.min(0)
    path = [m - 1]
    for t in range(steps, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


def coordinate_search(
    objective: Callable[[torch.Tensor], float],
    sigmas: torch.Tensor,
    sigma_floor: float,
    *,
    step: float = 0.5,
    min_step: float = 0.01,
    max_evals: int = 600,
    best: float | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Minimise objective(sigmas) over the inner levels sigmas[1:-1] by coordinate search in log sigma.

    Each level moves by +-step (kept strictly between its neighbours and above sigma_floor); a sweep
    without improvement halves the step, down to min_step. sigmas[0] and the final 0 stay fixed.
    Returns (best sigmas, best objective, objective evaluations)."""
    logs = sigmas[:-1].log().clone()  # [steps]; logs[0] = log sigma_max is fixed
    best_sigmas = sigmas.clone()
    evals = 0
    if best is None:
        best, evals = objective(best_sigmas), 1
    gap = 1e-3  # neighbouring levels stay at least 0.1% apart
    floor = math.log(sigma_floor)
    while step >= min_step and evals < max_evals and len(logs) > 1:
        improved = False
        for k in range(1, len(logs)):
            hi = float(logs[k - 1]) - gap
            lo = float(logs[k + 1]) + gap if k + 1 < len(logs) else floor
            for direction in (-1.0, 1.0):
                value = min(max(float(logs[k]) + direction * step, lo), hi)
                if abs(value - float(logs[k])) < 1e-12 or evals >= max_evals:
                    continue
                trial = logs.clone()
                trial[k] = value
                candidate = torch.cat([sigmas[:1], trial[1:].exp(), trial.new_zeros(1)])
                score = objective(candidate)
                evals += 1
                if score < best:
                    best, logs, best_sigmas, improved = score, trial, candidate, True
                    break
        if not improved:
            step /= 2
    return best_sigmas, best, evals


def relocate(objective, sigmas: torch.Tensor, sigma_floor: float, tries: int = 3):
    """Move each of the `tries` most crowded inner levels (smallest log gap to a neighbour) to the
    log-midpoint of every other step in turn (the last step's midpoint taken between its level and
    sigma_floor); returns the best such grid, its objective and the evaluations. Coordinate search
    cannot pass a level through its neighbours; this move lets a stranded level go where it helps."""
    logs = sigmas[:-1].log()  # [steps]
    steps = len(logs)
    best, best_sigmas, evals = math.inf, sigmas, 0
    if steps < 3:
        return best_sigmas, best, evals

    def crowding(k: int) -> float:  # log gap to the nearer neighbour
        return min(float(logs[k - 1] - logs[k]), float(logs[k] - logs[k + 1]) if k + 1 < steps else math.inf)

    for k in sorted(range(1, steps), key=crowding)[:tries]:
        kept = torch.cat([logs[:k], logs[k + 1 :]])
        bounds = [*kept.tolist(), math.log(sigma_floor)]
        for i in range(len(kept)):
            if bounds[i] - bounds[i + 1] < 4e-3:
                continue
            middle = kept.new_tensor([(bounds[i] + bounds[i + 1]) / 2])
            trial = torch.sort(torch.cat([kept, middle]), descending=True)[0]
            candidate = torch.cat([sigmas[:1], trial[1:].exp(), trial.new_zeros(1)])
            score = objective(candidate)
            evals += 1
            if score < best:
                best, best_sigmas = score, candidate
    return best_sigmas, best, evals


def direct_search(objective, sigmas: torch.Tensor, sigma_floor: float, *, step: float, max_evals: int):
    """Coordinate search, then relocations of the most crowded level, each followed by a finer
    coordinate search, while they improve and evaluations remain; returns (sigmas, objective)."""
    sigmas, best, used = coordinate_search(objective, sigmas, sigma_floor, step=step, max_evals=max_evals)
    while used < max_evals:
        moved, score, evals = relocate(objective, sigmas, sigma_floor)
        used += evals
        if not score < best:
            break
        sigmas, best, evals = coordinate_search(
            objective, moved, sigma_floor, step=step / 4, max_evals=max_evals - used, best=score
        )
        used += evals
    return sigmas, best


SHAPE_KNOTS = 6  # parameters of the shape family's step sizes (plus one for the smallest level)


def shape_grid(params, steps: int, sigma_floor: float, sigma_max: float) -> torch.Tensor:
    """The grid of the shape family: params[0] places the smallest level between sigma_floor and
    sigma_max / 2 (logistic); params[1:] are log step sizes in log sigma at evenly spaced knots over
    the steps, interpolated linearly, the steps scaled to go from sigma_max to that level."""
    lo, hi = math.log(sigma_floor), math.log(sigma_max / 2)
    z = min(max(float(params[0]), -50.0), 50.0)
    last = lo + (hi - lo) / (1 + math.exp(-z))
    position = (np.arange(steps - 1) + 0.5) / (steps - 1)
    weights = np.exp(np.interp(position, np.linspace(0, 1, len(params) - 1), np.clip(params[1:], -50, 50)))
    logs = math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(weights / weights.sum())]) * (
        math.log(sigma_max) - last
    )
    sigmas = torch.from_numpy(np.exp(logs))
    sigmas[0] = sigma_max
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def shape_search(
    objective, start: torch.Tensor, sigma_floor: float, *, max_evals: int = 400, rounds: int = 1
):
    """Nelder-Mead (adaptive, scipy) over shape_grid's parameters, from the shape closest to `start`
    (its smallest level and step sizes at the knots): up to `rounds` rounds of up to max_evals
    evaluations, each restarted with a fresh simplex at the previous end while a round improves;
    returns (sigmas, objective). Grids of fewer than 3 steps have no shape to tune and are returned
    as they are."""
    steps = len(start) - 1
    if steps < 3:
        return start, objective(start)
    sigma_max = float(start[0])
    logs = start[:-1].log().numpy()
    position = (np.arange(steps - 1) + 0.5) / (steps - 1)
    knots = np.interp(np.linspace(0, 1, SHAPE_KNOTS), position, np.log(-np.diff(logs)))
    lo, hi = math.log(sigma_floor), math.log(sigma_max / 2)
    q = min(max((logs[-1] - lo) / (hi - lo), 1e-3), 1 - 1e-3)
    params, best = np.concatenate([[math.log(q / (1 - q))], knots]), math.inf

    def score(p):
        return objective(shape_grid(p, steps, sigma_floor, sigma_max))

    for _ in range(rounds):
        found = minimize(
            score, params, method="Nelder-Mead",
            options={"maxfev": max_evals, "xatol": 1e-3, "fatol": 1e-6, "adaptive": True},
        )  # fmt: skip
        if not found.fun < best:
            break
        params, best = found.x, float(found.fun)
    return shape_grid(params, steps, sigma_floor, sigma_max), best


@dataclass
class _Problem:
    """What the methods share: the sampler, noise, references and the end-point errors."""

    sampler_fn: Callable
    denoiser: object
    cond: object
    x_tune: torch.Tensor
    x_check: torch.Tensor
    states: list  # reference states of x_tune at the fine levels
    end_check: torch.Tensor  # reference end point of x_check

    def tune_error(self, sigmas: torch.Tensor) -> float:
        return rms(self.sampler_fn(self.denoiser, self.x_tune, sigmas, cond=self.cond), self.states[-1])

    def check_error(self, sigmas: torch.Tensor) -> float:
        return rms(self.sampler_fn(self.denoiser, self.x_check, sigmas, cond=self.cond), self.end_check)


RHOS = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 20.0, 60.0)  # 1: uniform in sigma .. 60: nearly log-uniform
START_RHOS = (3.0, 7.0, 20.0, 60.0)  # one start of the direct search per rho (the best smallest level)


def family_starts(objective, steps: int, sigma_min: float, sigma_max: float, lowest: int = 6) -> list:
    """Karras-type grids (Karras et al. 2022, eq. 5) with `lowest` smallest levels from sigma_min up to
    min(sigma_max / 2, 1000 sigma_min), log-spaced: for each rho in START_RHOS the best of them, then
    the best over all RHOS (the peers' "grid without the sigma_min step" is one of these grids).

    Starts of different rho end in different local optima of a search (measured on the tree mixture:
    from 0.033 to 0.021 at 16 evaluations by a coordinate search), hence several; the best start is not
    the best end. The direct search shape-searches from the first two (rho 3 and 7)."""
    if steps == 1:
        return [karras_sigmas(1, sigma_min, sigma_max)]
    top = min(sigma_max / 2, 1000 * sigma_min)
    floors = torch.logspace(math.log10(sigma_min), math.log10(top), lowest, dtype=torch.float64).tolist()
    floors[0] = sigma_min
    scored = {}  # rho -> [(objective, grid)]
    for rho in RHOS:
        for lo in floors:
            grid = karras_sigmas(steps, lo, sigma_max, rho)
            grid[0] = sigma_max  # exactly: (sigma_max^(1/rho))^rho may be off in the last bit
            scored.setdefault(rho, []).append((objective(grid), grid))
    best = [min(scored[rho], key=lambda pair: pair[0]) for rho in START_RHOS]
    overall = min((pair for pairs in scored.values() for pair in pairs), key=lambda pair: pair[0])
    return [grid for _, grid in best] + ([] if any(overall[1] is g for _, g in best) else [overall[1]])


def _candidates(problem: _Problem, method: str, baseline: torch.Tensor, levels, steps, floor, max_evals):
    """{name: sigmas} of the grids the method produces (the baseline always included)."""
    grids = {"karras": baseline}
    if method in ("gits", "gits+direct"):
        cost = gits_costs(problem.sampler_fn, problem.denoiser, problem.states, levels, cond=problem.cond)
        grids["gits"] = levels[cheapest_path(cost, steps)]
    if method in ("direct", "gits+direct"):
        mean_gap = math.log(float(baseline[0]) / floor) / max(steps - 1, 1)

        def search(start):
            step = min(0.5, mean_gap / 2)
            return direct_search(problem.tune_error, start, floor, step=step, max_evals=max_evals)[0]

        starts = family_starts(problem.tune_error, steps, floor, float(baseline[0]))
        shaped = [shape_search(problem.tune_error, s, floor, max_evals=max_evals + 100) for s in starts[:2]]
        best = min(shaped, key=lambda pair: pair[1])[0]
        grids["direct"] = direct_search(problem.tune_error, best, floor, step=0.1, max_evals=3 * max_evals)[0]
        if "gits" in grids:
            grids["gits+direct"] = search(grids["gits"])
    return grids


def _labels(cond, samples: int, device) -> torch.Tensor | None:
    """tune_grid's cond as per-sample labels: None, one class for all, or `samples` labels."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor) and cond.dim() > 0:
        if cond.shape != (samples,) or cond.is_floating_point():
            raise ConfigError(
                f"cond must be one class or {samples} integer labels, got shape {tuple(cond.shape)}"
            )
        return cond.to(device=device, dtype=torch.long)
    return torch.full((samples,), int(cond), dtype=torch.long, device=device)


def tune_grid(
    denoiser,
    shape: tuple[int, ...],
    sampler: str,
    nfe: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    cond=None,
    method: str = "gits+direct",
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    fine_levels: int = 96,  # at least 2 * steps are used
    substeps: int = 8,
    max_evals: int = DEFAULT_MAX_EVALS,  # objective evaluations of each start's direct search
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> TunedGrid:
    """The sigma grid of `nfe` evaluations that minimises `sampler`'s end-point error for `denoiser`.

    GITS (Chen et al. 2024) and/or a direct search (Sabour et al. 2024; Xue et al. 2024), see the module
    docstring. Tuning samples are noise streams 0..samples-1 of `seed`, validation samples the next
    `samples` streams (PerSampleNoise); cond is None, one class for all samples, or `samples` class
    labels (each set gets the same labels, e.g. the classes in turn as `eval` samples). The grid starts at
    sigma_max, keeps its nonzero levels >= sigma_min and ends in 0; the baseline is Karras (rho).
    progress: called after each denoiser evaluation with (evaluations done, expected total), the total
    an upper bound (evaluation_budget: the searches may stop early; it grows if ever passed)."""
    start_time = time.perf_counter()
    steps = check_tunable(sampler, nfe)
    lookup("tuning method", method, METHODS)
    if samples < 1 or fine_levels < 2 or substeps < 1:
        raise ConfigError(
            f"need samples >= 1, fine_levels >= 2 and substeps >= 1, got {samples}, {fine_levels}, {substeps}"
        )
    baseline = karras_sigmas(steps, sigma_min, sigma_max, rho)
    fine_levels = max(fine_levels, 2 * steps)  # GITS picks `steps` of them: leave it a choice
    fine = torch.linspace(math.log(sigma_max), math.log(sigma_min), fine_levels, dtype=torch.float64)
    levels = torch.cat([fine.exp(), fine.new_zeros(1)])  # log-spaced, then 0
    levels[0], levels[-2] = sigma_max, sigma_min  # exactly, not exp(log(.))
    sampler_fn = get_sampler(sampler)
    if progress is not None:
        budget = evaluation_budget(method, nfe, steps, len(levels), substeps, max_evals)
        denoiser = _Counted(denoiser, progress, budget)
    labels = _labels(cond, samples, device)
    x = [
        PerSampleNoise.from_seed(seed, samples, start=start, device=device).randn(shape, dtype) * sigma_max
        for start in (0, samples)
    ]
    states = reference_states(denoiser, x[0], levels, cond=labels, substeps=substeps)
    end_check = reference_states(denoiser, x[1], levels, cond=labels, substeps=substeps)[-1]
    problem = _Problem(sampler_fn, denoiser, labels, x[0], x[1], states, end_check)
    grids = _candidates(problem, method, baseline, levels, steps, sigma_min, max_evals)
    errors = {name: problem.check_error(sigmas) for name, sigmas in grids.items()}
    chosen = min(errors, key=errors.get)
    return TunedGrid(
        sigmas=grids[chosen],
        sampler=sampler,
        nfe=nfe,
        steps=steps,
        method=method,
        chosen=chosen,
        error_before=errors["karras"],
        error_after=errors[chosen],
        errors=errors,
        grids=grids,
        seconds=time.perf_counter() - start_time,
        samples=samples,
        seed=seed,
        baseline=f"karras rho={rho:g} sigma {sigma_min:g}..{sigma_max:g}",
    )
