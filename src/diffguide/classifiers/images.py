"""A small CNN classifier per image dataset: the feature space of the image metrics.

Heads: class logits for class-labelled sets; type logits + accessory logits (multi-label) for
CryptoPunks. `features(x)` (the penultimate layer, `feature_dim` wide) is where metrics_images
computes FID, KID, precision and recall. Saved as a folder: classifier.json (the common classifier
record, kind "images": see classifiers/record.py) + model.safetensors; rebuilt from the folder alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from diffguide.classifiers.record import (
    ClassifierRecord,
    architecture,
    load_weights,
    read_record,
    write_classifier,
)
from diffguide.data import make_dataset
from diffguide.data.images import to_unit
from diffguide.data.registry import DataConfig
from diffguide.errors import CheckpointError, ConfigError, output_error


@dataclass
class ImageArchitecture:
    """ImageClassifier's constructor arguments: the record's `architecture` for kind "images"."""

    in_channels: int = 1
    num_classes: int = 0
    num_types: int = 0
    num_accessories: int = 0
    width: int = 32
    feature_dim: int = 64
    pool: int = 1


class ImageClassifier(nn.Module):
    """conv stacks (width, 2 width) with max-pooling, global average pool, a feature layer, heads."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        num_types: int = 0,
        num_accessories: int = 0,
        width: int = 32,
        feature_dim: int = 64,
        pool: int = 1,
    ):
        super().__init__()
        self.pool = pool
        self.num_classes, self.num_types, self.num_accessories = num_classes, num_types, num_accessories

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
            )  # fmt: skip

        self.body = nn.Sequential(
            block(in_channels, width), nn.MaxPool2d(2, ceil_mode=True), block(width, 2 * width)
        )
        # pool x pool cells kept before the feature layer: 1 = global average; more keeps where a
        # small detail is (an earring, a pipe), which the CryptoPunks accessories need
        self.feature = nn.Linear(2 * width * pool * pool, feature_dim)
        self.class_head = nn.Linear(feature_dim, num_classes) if num_classes else None
        self.type_head = nn.Linear(feature_dim, num_types) if num_types else None
        self.accessory_head = nn.Linear(feature_dim, num_accessories) if num_accessories else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, feature_dim] features of images in [-1, 1]."""
        h = F.adaptive_avg_pool2d(self.body(x.float()), self.pool)
        return F.silu(self.feature(h.flatten(1)))

    def heads(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.class_head is not None:
            out["class"] = self.class_head(f)
        if self.type_head is not None:
            out["type"] = self.type_head(f)
            out["accessories"] = self.accessory_head(f)
        return out

    def forward(self, x):
        return self.heads(self.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(features [N, D], predictions: class/type [N] long, accessories [N, A] 0/1) in eval mode."""
        was = self.training
        self.eval()
        feats, preds = [], {}
        for start in range(0, len(x), batch_size):
            f = self.features(x[start : start + batch_size])
            feats.append(f)
            for k, v in self.heads(f).items():
                preds.setdefault(k, []).append((v > 0).long() if k == "accessories" else v.argmax(1))
        self.train(was)
        return torch.cat(feats), {k: torch.cat(v) for k, v in preds.items()}


def _targets(dataset, labels):
    attrs = getattr(dataset, "attributes", None)
    if attrs is not None:
        nt = len(attrs.types)
        return {"type": labels[:, :nt].argmax(1), "accessories": labels[:, nt:].float()}
    return {"class": labels}


def classifier_loss(model: ImageClassifier, x, targets: dict) -> torch.Tensor:
    out = model(x)
    loss = torch.zeros(())
    if "class" in out:
        loss = loss + F.cross_entropy(out["class"], targets["class"])
    if "type" in out:
        loss = loss + F.cross_entropy(out["type"], targets["type"])
        # rare positives (about 3 of 87 per punk): weight them up so the head does not settle on "none"
        pos_weight = torch.full((out["accessories"].shape[1],), 5.0)
        bce = F.binary_cross_entropy_with_logits(
            out["accessories"], targets["accessories"], pos_weight=pos_weight
        )
        loss = loss + 10 * bce
    return loss


def heldout_accuracy(model: ImageClassifier, dataset) -> dict[str, float]:
    x, labels = dataset.heldout()
    _, pred = model.predict(x)
    t = _targets(dataset, labels)
    out = {}
    for k in ("class", "type"):
        if k in pred:
            out[f"{k}_accuracy"] = float((pred[k] == t[k]).float().mean())
    if "accessories" in pred:
        out["accessories_exact"] = float(
            (pred["accessories"] == t["accessories"].long()).all(1).float().mean()
        )
        out["accessories_bit_accuracy"] = float(
            (pred["accessories"] == t["accessories"].long()).float().mean()
        )
    return out


def train_classifier(
    data: DataConfig,
    out_dir: str | Path,
    *,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    feature_dim: int = 64,
    seed: int = 0,
    log=print,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Train the dataset's classifier on its training split (light noise augmentation) and save it.

    log: where the loss is reported (every tenth of the steps); progress: called with the number of
    steps done after each step (a progress bar)."""
    data = DataConfig(**{**asdict(data), "conditional": True})
    dataset = make_dataset(data)
    if getattr(dataset, "kind", "points") != "images":
        raise ConfigError(
            f"dataset {data.name!r} is {dataset.kind} data; this classifier is an image feature classifier: "
            "give an image dataset (digits, mnist, fashion-mnist, cryptopunks, ...); a 2D run's noise-"
            "conditional classifier is trained with `diffguide train ... --with-classifier`"
        )
    if not dataset.num_classes:
        raise CheckpointError(
            f"dataset {data.name!r} has no labels; a classifier needs classes or attributes"
        )
    out_dir = Path(out_dir)
    try:  # before training: an unwritable output folder fails at once
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out_dir, e) from None
    torch.manual_seed(seed)
    attrs = getattr(dataset, "attributes", None)
    sizes = ImageArchitecture(
        in_channels=dataset.shape[0],
        num_classes=0 if attrs else dataset.num_classes,
        num_types=len(attrs.types) if attrs else 0,
        num_accessories=len(attrs.accessories) if attrs else 0,
        width=width,
        feature_dim=feature_dim,
        pool=1 if max(dataset.shape[1:]) <= 8 else 4,
    )
    model = ImageClassifier(**asdict(sizes))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed + 1)
    labels_all = dataset.labels
    t0 = time.time()
    model.train()
    for step in range(steps):
        idx = dataset.train_index[torch.randint(0, len(dataset.train_index), (batch_size,), generator=g)]
        x = to_unit(dataset.images[idx])
        x = x + 0.05 * torch.randn(x.shape, generator=g)  # robustness to the small noise left in samples
        loss = classifier_loss(model, x, _targets(dataset, labels_all[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1)
        if log and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
            log(f"step {step + 1}/{steps}  loss {loss.item():.4f}")
    model.eval()
    acc = heldout_accuracy(model, dataset)
    training = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
    training.update(train_seconds=round(time.time() - t0, 1), heldout=acc)
    record = ClassifierRecord(kind="images", architecture=asdict(sizes), data=data, training=training)
    write_classifier(out_dir, model, record)
    if log:
        log(f"held-out accuracy: {acc}")
    return out_dir


def build_classifier(record: ClassifierRecord, folder: str | Path) -> ImageClassifier:
    """An untrained ImageClassifier of the record's architecture (kind "images")."""
    return ImageClassifier(**asdict(architecture(record, ImageArchitecture, folder)))


def load_classifier(folder: str | Path) -> tuple[ImageClassifier, dict]:
    """(model in eval mode, its classifier.json as a dict in the current layout) from a classifier
    folder; the model's `.record` is the ClassifierRecord. A classifier of another kind is a ConfigError."""
    record = read_record(folder, expected="images")
    model = load_weights(build_classifier(record, folder), folder, record)
    return model, asdict(record)
