"""Image metrics in a small classifier's feature space: FID, KID, precision/recall, conditional accuracy.

Named fid_<data>_clf etc.: they use the dataset's own classifier (image_classifier.py) instead of
Inception-v3, so they rank models trained on the same data but are NOT comparable with published
(Inception) FIDs, nor across datasets or classifiers. Standard Inception FID is `inception_fid`,
available only when torch-fidelity and its Inception weights are installed locally.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from diffguide.classifiers.images import load_classifier
from diffguide.data.images import to_uint8
from diffguide.errors import ConfigError
from diffguide.plots.images import example_conditions
from diffguide.samplers.generation import check_sample_count, generate, sigma_grid


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}) between two Gaussians (Heusel et al. 2017, FID)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    covmean = _sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: offset the diagonals (as pytorch-fid does)
        offset = np.eye(len(cov1)) * 1e-6
        covmean = _sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean)))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def fid(features_a, features_b) -> float:
    """FID between two feature sets [N, D], [M, D]."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def kid(features_a, features_b, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, kernel (x.y / d + 1)^3, subset mean."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ConfigError(f"KID needs at least 2 samples in each set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        total += (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    return float(total / subsets)


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 0th neighbour is the point itself


def check_neighbours(k: int) -> None:
    """k of the k-NN balls: k = 0 would make every ball a point and precision/recall 0."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"precision/recall needs k >= 1 neighbours (default 3), got k={k!r}")


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls around each set's points.

    precision: fraction of fake points inside some real point's k-NN ball; recall: the converse.
    """
    check_neighbours(k)
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ConfigError(f"precision/recall with k={k} needs more than {k} samples in each set")
    r_real, r_fake = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = torch.cdist(fake, real)  # [n_fake, n_real]
    precision = (d <= r_real[None]).any(1).double().mean()
    recall = (r_fake[None] >= d.T).any(1).double().mean()
    return float(precision), float(recall)


def conditional_accuracy(pred: dict, cond, accessory_names: list[str] | None = None) -> dict[str, float]:
    """Fraction of samples whose predicted class / type / accessories match the requested condition.

    For attribute conditions: type_accuracy (over samples with a requested type), accessory_recall
    (requested accessories detected), accessories_exact (the predicted set equals the requested one)
    and per-accessory accuracy for each accessory requested at least once.
    """
    if cond is None:
        return {}
    if not isinstance(cond, dict):
        cond = torch.as_tensor(cond).long().expand(len(pred["class"]))
        return {"accuracy": float((pred["class"] == cond).float().mean())}
    out = {}
    kind = torch.as_tensor(cond["type"]).long()
    has = kind >= 0
    if has.any():
        out["type_accuracy"] = float((pred["type"][has] == kind[has]).float().mean())
    acc = torch.as_tensor(cond["accessories"]).float()
    known = (acc >= 0).all(1)
    if known.any():
        want, got = acc[known] > 0, pred["accessories"][known] > 0
        if want.any():
            out["accessory_recall"] = float(got[want].float().mean())
        out["accessories_exact"] = float((want == got).all(1).float().mean())
        if accessory_names is not None:
            per = {}
            for j in torch.nonzero(want.any(0)).reshape(-1).tolist():
                per[accessory_names[j]] = float(got[want[:, j], j].float().mean())
            out["per_accessory"] = per
    return out


def feature_metrics(real_features, fake_features, prefix: str, k: int = 3) -> dict[str, float]:
    """fid_<prefix>, kid_<prefix>, precision_<prefix>, recall_<prefix> for two feature sets."""
    p, r = precision_recall(real_features, fake_features, k)
    return {
        f"fid_{prefix}": fid(real_features, fake_features),
        f"kid_{prefix}": kid(real_features, fake_features),
        f"precision_{prefix}": p,
        f"recall_{prefix}": r,
    }


INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path() -> Path:
    """Where torch-fidelity looks for its Inception weights: torch.hub's cache, <hub dir>/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_missing() -> list[str]:
    """What `inception_fid` needs and is not here (empty: it can run): packages, then the weights file."""
    missing = [
        f"the package {package} ({why})"
        for module, package, why in (
            ("torch_fidelity", "torch-fidelity", "pip install torch-fidelity"),
            ("torchvision", "torchvision", "torch-fidelity imports it; install the build matching torch"),
        )
        if importlib.util.find_spec(module) is None
    ]
    weights = inception_weights_path()
    if not weights.is_file():
        missing.append(
            f"the weights file {INCEPTION_WEIGHTS} at {weights} (nothing is downloaded at run time: copy it "
            "there from a machine that has it, or point $TORCH_HOME at a folder whose hub/checkpoints/ holds it)"
        )
    return missing


def check_inception() -> None:
    """Raise ConfigError naming each missing prerequisite of Inception FID; call it before sampling."""
    missing = inception_missing()
    if missing:
        raise ConfigError(
            "Inception FID needs " + "; and ".join(missing) + ". Without --inception, `diffguide eval` "
            "computes the fid_<data>_clf metrics, which need none of these"
        )


def inception_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Standard Inception FID through torch-fidelity, only when it and its weights are installed locally."""
    check_inception()
    import torch_fidelity

    class _Images(torch.utils.data.Dataset):
        def __init__(self, x):
            x = to_uint8(x)
            self.x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    out = torch_fidelity.calculate_metrics(
        input1=_Images(fake), input2=_Images(real), fid=True, cuda=False, verbose=False
    )
    return float(out["frechet_inception_distance"])


def _with_steps(callback, steps: int):
    return lambda info: callback({**info, "steps": steps})


def _grid(run, steps: int | None, sigmas) -> tuple[torch.Tensor, int]:
    """(sigmas, steps): the run's grid of `steps` (default: the run's) steps, or the given sigmas."""
    s = run.config.sample
    if sigmas is None:
        steps = s.steps if steps is None else steps  # steps=0 is an error, not the run's default
        return sigma_grid(s.grid, steps, run.process, s.sigma_min, s.sigma_max, s.rho), steps
    if steps is not None:
        raise ConfigError("give either steps or sigmas (a grid fixes its steps), not both")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)  # generate() checks it
    return sigmas, len(sigmas) - 1


def _classifier_for(run, classifier_dir):
    """The image feature classifier in classifier_dir, refused unless trained on the run's dataset."""
    classifier, _ = load_classifier(classifier_dir)  # refuses a classifier of 2D points
    data_name, trained_on = run.config.data.name, classifier.record.data.name
    if trained_on != data_name:
        raise ConfigError(
            f"classifier {str(classifier_dir)!r} was trained on {trained_on!r}, the run on {data_name!r}"
        )
    return classifier


def evaluate_images(
    run,
    denoiser,
    classifier_dir: str | Path,
    *,
    n: int = 2000,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    batch_size: int = 500,
    k: int = 3,
    inception: bool = False,
    callback=None,
    sigmas=None,
    device: str | torch.device = "cpu",
    sampler_kwargs: dict | None = None,
) -> dict:
    """Generate n samples from `denoiser` (conditions like the training data's) and measure them.

    Class-conditional runs request classes 0..K-1 in turn; attribute runs request the (type,
    accessories) of a fixed seeded set of training punks (plots.images.reference_index); unconditional
    runs get FID/KID/precision/recall only.
    Real images are the dataset's held-out split. Returns (JSON-ready dict of metrics, samples).
    With `inception`, its prerequisites are checked before anything is sampled; if Inception FID then
    fails anyway, the other metrics are still returned, with the error as `fid_inception_error`.
    callback: the sampler's step callback (docs/samplers.md), with "start" (generate's) and "steps"
    (the number of sampler steps) added: a progress bar. device: where the sampling runs (the
    denoiser's device); the samples come back to the CPU, where the classifier measures them.
    sigmas: a sigma grid (e.g. a tuned one) instead of the run's grid of `steps` steps.
    sampler_kwargs: the sampler's own options (e.g. {"eta": 0.5} for ddim).
    """
    import time
    import warnings

    check_neighbours(k)
    if inception:
        check_inception()

    s = run.config.sample
    sigmas, steps = _grid(run, steps, sigmas)
    check_sample_count(n, run.dataset.shape)  # before example_conditions allocates n labels
    classifier = _classifier_for(run, classifier_dir)
    data_name = run.config.data.name
    cond = example_conditions(run, n)
    if isinstance(cond, dict):  # attribute conditions: generate slices them, it does not move them
        cond = {key: value.to(device) for key, value in cond.items()}
    t0 = time.time()
    x = generate(
        denoiser, n, run.dataset.shape, sigmas=sigmas, sampler=sampler or s.sampler, seed=seed, cond=cond,
        batch_size=batch_size, callback=None if callback is None else _with_steps(callback, steps),
        device=device, sampler_kwargs=sampler_kwargs,
    )  # fmt: skip
    seconds = time.time() - t0
    real, _ = run.dataset.heldout()
    real_f, _ = classifier.predict(real)
    fake_f, pred = classifier.predict(x)
    tag = f"{data_name.replace('-', '_')}_clf"
    out = {
        "run": str(run.path),
        "step": run.step,
        "n": n,
        "n_real": len(real),
        "seed": seed,
        "sampler": sampler or s.sampler,
        "sampler_options": sampler_kwargs or {},
        "steps": steps,
        "sample_seconds": round(seconds, 1),
        "classifier": str(classifier_dir),
        "classifier_heldout": classifier.record.training.get("heldout", {}),
        **feature_metrics(real_f.numpy(), fake_f.numpy(), tag, k),
    }
    attrs = getattr(run.dataset, "attributes", None)
    out.update(conditional_accuracy(pred, cond, attrs.accessories if attrs else None))
    if inception:
        try:
            out["fid_inception"] = inception_fid(real, x)
        except Exception as e:  # never lose the metrics of a long sampling run to a late failure
            out["fid_inception_error"] = f"{type(e).__name__}: {e}"
            warnings.warn(f"Inception FID failed, the other metrics are kept: {e}", stacklevel=2)
    return out, x
