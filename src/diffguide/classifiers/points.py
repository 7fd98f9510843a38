"""Noise-conditional classifiers p(y | x, sigma) for low-dimensional data, for classifier guidance.

Dhariwal & Nichol 2021 train a classifier on noisy inputs x = x0 + sigma eps at the noise levels the
diffusion model sees, and shift the sampler by its gradient. Here the classifier is trained on the same
data and the same noise-level distribution as a diffusion run, and saved like a run: a folder with
classifier.json (the common classifier record, kind "points": see classifiers/record.py) and
classifier.safetensors (weights), loadable without pickle.
`ExactClassifier` is the Bayes classifier of an analytic mixture, the known answer for tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from diffguide.classifiers.record import (
    RECORD_FILE,
    WEIGHTS_FILES,
    ClassifierRecord,
    architecture,
    load_weights,
    read_record,
    write_classifier,
)
from diffguide.config import RunConfig
from diffguide.data import make_dataset
from diffguide.data.registry import DataConfig
from diffguide.denoiser import batch_sigma
from diffguide.errors import ConfigError
from diffguide.losses import DenoisingLoss
from diffguide.models.nets.embedding import make_embedding
from diffguide.models.nets.mlp import ResidualBlock
from diffguide.processes import make_process

CONFIG_FILE = RECORD_FILE  # the names the dashboard looks for
WEIGHTS_FILE = WEIGHTS_FILES["points"]


@dataclass
class ClassifierConfig:
    """Architecture and optimisation of a noise-conditional classifier."""

    width: int = 128
    depth: int = 3
    emb_dim: int = 32
    steps: int = 1500
    batch_size: int = 1024
    lr: float = 2e-3
    seed: int = 0
    sigma_data: float = 0.5


@dataclass
class PointsArchitecture:
    """NoisyClassifier's constructor arguments: the record's `architecture` for kind "points"."""

    dim: int = 2
    num_classes: int = 2
    width: int = 128
    depth: int = 3
    emb_dim: int = 32
    sigma_data: float = 0.5


class NoisyClassifier(nn.Module):
    """logits = b + sigma_data c_in F(c_in x, log(sigma) / 4) [N, num_classes]; c_in = 1 / sqrt(sigma^2 +
    sigma_data^2) (EDM), b a learned per-class bias (the log prior up to a constant).

    Why the factor sigma_data c_in: at high noise the exact posterior's logits are ~ x . mu_y / sigma^2
    (the classes' blurred densities differ by a linear term), i.e. ~ (c_in x) . mu_y / sigma, flattening
    like 1 / sigma. Without the factor the net must learn that decay from the noise embedding, and it
    does not where training rarely samples sigma: measured on the tree, sigma^2 grad log p(y | x) of a
    classifier trained without it grew like sigma (55 at sigma = 80 against the exact 1.5), and guided
    samples were flung off the data (share classified as the requested class fell as w grew).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 32,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        self.sigma_data = float(sigma_data)
        self.noise_emb = nn.Sequential(make_embedding("positional", emb_dim), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, emb_dim, 0.0) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, num_classes)
        self.log_prior = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = batch_sigma(sigma, x).float()  # [N]
        c_in = (sigma**2 + self.sigma_data**2).rsqrt()[:, None]
        emb = nn.functional.silu(self.noise_emb(sigma.log() / 4))
        h = self.inp(x.reshape(x.shape[0], -1).float() * c_in)
        for block in self.blocks:
            h = block(h, emb)
        return self.log_prior + self.sigma_data * c_in * self.out(nn.functional.silu(self.out_norm(h)))


class ExactClassifier(nn.Module):
    """Bayes classifier of a GaussianMixture: logits_y = log p(y) + log p(x | y; sigma) (differentiable)."""

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        m = self.mixture
        xm = x.to(m.weights.device)  # the mixture's tensors stay where they are (the CPU); x may be on a GPU
        sigma = batch_sigma(sigma, xm.to(torch.float64))
        cols = []
        for y in range(m.num_classes):
            prior = m.weights[m.classes == y].sum().log()
            cols.append(prior + m.log_prob(xm, sigma, torch.full((x.shape[0],), y)))
        return torch.stack(cols, 1).to(x.device, x.dtype)


def train_classifier(
    run_cfg: RunConfig, out_dir: str | Path, cfg: ClassifierConfig | None = None, progress: bool = False
) -> Path:
    """Train p(y | x0 + sigma eps, sigma) on a run's data with the run's training noise levels.

    Cross-entropy on fresh noisy batches; the classes are the dataset's labels (the run's data must
    be labelled). Writes classifier.json and classifier.safetensors into out_dir and returns it.
    """
    cfg = cfg or ClassifierConfig()
    data_cfg = DataConfig(**{**asdict(run_cfg.data), "conditional": True})
    dataset = make_dataset(data_cfg)
    if dataset.num_classes < 2:
        raise ConfigError(
            f"dataset {data_cfg.name!r} has no class labels; a classifier needs at least 2 classes"
        )
    if dataset.kind != "points":
        raise ConfigError("classifier2d trains classifiers for low-dimensional (points) data only")
    dim = math.prod(dataset.shape)
    noise = DenoisingLoss(run_cfg.diffusion.loss, make_process(run_cfg.diffusion.process))
    torch.manual_seed(cfg.seed)
    sizes = PointsArchitecture(dim, dataset.num_classes, cfg.width, cfg.depth, cfg.emb_dim, cfg.sigma_data)
    net = NoisyClassifier(**asdict(sizes))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    loss_value = float("nan")
    for step in range(cfg.steps):
        # cosine learning-rate decay to 5% keeps the end of training quiet
        lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps))))
        for group in opt.param_groups:
            group["lr"] = lr
        x0, labels = dataset.sample_batch(cfg.batch_size, generator)
        sigma = noise.sample_sigma(cfg.batch_size, generator).float()
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
        loss = nn.functional.cross_entropy(net(x, sigma), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if progress and (step + 1) % max(1, cfg.steps // 10) == 0:
            print(f"classifier step {step + 1}/{cfg.steps}: cross-entropy {loss_value:.4f}")
    training = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed}
    training.update(final_loss=loss_value, noise=asdict(run_cfg.diffusion.loss))
    training.update(process=asdict(run_cfg.diffusion.process))
    record = ClassifierRecord(kind="points", architecture=asdict(sizes), data=data_cfg, training=training)
    return write_classifier(out_dir, net, record)


def is_classifier_dir(path: str | Path) -> bool:
    """Whether `path` holds a classifier record (of either kind)."""
    return (Path(path) / CONFIG_FILE).is_file()


def build_classifier(record: ClassifierRecord, folder: str | Path) -> NoisyClassifier:
    """An untrained NoisyClassifier of the record's architecture (kind "points")."""
    return NoisyClassifier(**asdict(architecture(record, PointsArchitecture, folder)))


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> NoisyClassifier:
    """Rebuild a classifier from its folder (classifier.json + classifier.safetensors), in eval mode;
    `.record` is its ClassifierRecord. A classifier of another kind is a ConfigError."""
    record = read_record(path, expected="points")
    return load_weights(build_classifier(record, path), path, record).to(device)


def accuracy(classifier, x: torch.Tensor, labels: torch.Tensor, sigma: float) -> float:
    """Fraction of points x0 + sigma eps classified correctly (for tests and reports)."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        xn = x.float() + sigma * torch.randn(x.shape, generator=g)
        return float((classifier(xn, torch.full((len(x),), float(sigma))).argmax(1) == labels).float().mean())
