"""Figures for image runs: PNG grids, per-sample PNGs and a GIF of the denoising progression."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from diffguide.data.images import to_uint8
from diffguide.errors import ConfigError, output_error
from diffguide.io import SOFTWARE_TAG, atomic_write_file, file_format
from diffguide.samplers.generation import sample_run


def to_pil(x: torch.Tensor, scale: int = 1):
    """One image [C, H, W] in [-1, 1] as a Pillow image (nearest-neighbour upscaled by `scale`)."""
    from PIL import Image

    arr = to_uint8(x).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def grid_image(x: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int | None = None):
    """Images [N, C, H, W] in [-1, 1] tiled into one Pillow image, nrow per row, `pad` px apart."""
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)  # white in [-1, 1] units
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = x[i].float()
    scale = scale or max(1, 256 // max(h, w) // 2)
    return to_pil(canvas, scale)


def image_tag(path) -> dict:
    """PIL save() arguments that mark a PNG as written by diffguide (its "Software" text)."""
    if file_format(path) != "png":
        return {}
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", SOFTWARE_TAG)
    return {"pnginfo": info}


def save_grid(path: str | Path, x: torch.Tensor, nrow: int | None = None) -> Path:
    path = Path(path)
    try:
        image = grid_image(x, nrow)
        atomic_write_file(path, lambda f: image.save(f, format=file_format(path), **image_tag(path)))
    except OSError as e:
        raise output_error(path, e) from None
    return path


class ProgressRecorder:
    """A sampler callback keeping, every few steps, the current x and x0_hat of the first `keep` samples."""

    def __init__(self, keep: int = 16):
        self.keep = keep
        self.frames: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def __call__(self, info: dict) -> None:
        if info.get("start", 0) != 0:
            return  # only the first batch holds the first samples
        k = self.keep
        self.frames.append(
            (info["x"][:k].detach().cpu(), info["denoised"][:k].detach().cpu(), float(info["sigma"]))
        )


def save_progress_gif(
    path: str | Path, recorder: ProgressRecorder, final: torch.Tensor, ms: int = 120
) -> Path:
    """GIF of the denoising: each frame shows x_t (top) and the current x0_hat (bottom) of the first samples."""
    if not recorder.frames:
        raise ConfigError("no sampler steps were recorded for the GIF")
    frames = []
    for x, denoised, sigma in recorder.frames:
        scale = max(1.0, sigma)  # keep noisy frames visible: x_t / max(1, sigma)
        frames.append(grid_image(torch.cat([x / scale, denoised]), nrow=len(x)))
    last = final[: len(recorder.frames[0][0])]
    frames.append(grid_image(torch.cat([last, last]), nrow=len(last)))
    path = Path(path)
    rest = frames[1:] + [frames[-1]] * 5
    atomic_write_file(
        path,
        lambda f: frames[0].save(
            f, format="gif", save_all=True, append_images=rest, duration=ms, loop=0, comment=SOFTWARE_TAG
        ),
    )
    return path


def save_image_samples(
    out: str | Path, x: torch.Tensor, *, per_sample: bool = False, progress: ProgressRecorder | None = None
) -> list[Path]:
    """Image samples [N, C, H, W] in [-1, 1] as a PNG grid `out`; with per_sample also one PNG each in
    OUT_STEM/, with `progress` (the sampler's recorded steps) also OUT_STEM.gif. Returns what was written."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"image samples are written as a .png grid; got --out {str(out)!r}")
    written = [save_grid(out, x)]
    if per_sample:
        folder = out.with_suffix("")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(x):
                image = to_pil(img)
                atomic_write_file(
                    folder / f"{i:05d}.png",
                    lambda f, image=image: image.save(f, format="png", **image_tag(".png")),
                )
        except OSError as e:
            raise output_error(folder, e) from None
        written.append(folder)
    if progress is not None:
        written.append(save_progress_gif(out.with_suffix(".gif"), progress, x))
    print("wrote " + ", ".join(str(w) for w in written))
    return written


def example_conditions(run, n: int):
    """Conditions for n samples: classes cycling 0..K-1, or the attributes of `reference_punks(n)`."""
    if not run.num_classes:
        return None
    ds = run.dataset
    if getattr(ds, "attributes", None) is not None:
        return ds.condition_of(reference_index(ds, n))
    return torch.arange(n) % run.num_classes


def reference_index(dataset, n: int) -> torch.Tensor:
    """n training examples in a fixed seeded order (cycled if n exceeds the split): the examples whose
    attributes an evaluation of an attribute-conditional run requests, and whose real images are its
    floor. Taken from the training split, not the held-out one: the held-out images are the reference
    set of FID, precision and recall, and samples asked for a held-out punk's exact attributes would
    nearly copy it (a punk is almost determined by its type and accessories), giving FIDs below the
    real-vs-real floor."""
    order = dataset.train_index[
        torch.randperm(len(dataset.train_index), generator=torch.Generator().manual_seed(0))
    ]
    return order[torch.arange(n) % len(order)]


def write_run_grid(run, path: Path, seed: int = 0, n: int | None = None) -> Path:
    """samples.png for a finished image run: n samples (one column per class for class-conditional runs)."""

    n = n or min(run.config.sample.n, 100)
    cond = example_conditions(run, n)
    nrow = run.num_classes if torch.is_tensor(cond) else None  # one column per class
    with torch.no_grad():
        x = sample_run(run, n, seed=seed, cond=cond, batch_size=256)
    return save_grid(path, x, nrow)


def save_w_sweep_plot(path: str | Path, rows: list[dict], keys: list[str], title: str = "") -> Path:
    """Line plots of metrics against the guidance weight w (one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), dpi=110)
    axes = np.atleast_1d(axes)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("guidance", ""), []).append(r)
    for ax, key in zip(axes, keys):
        for name, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["w"])
            ax.plot([r["w"] for r in rs], [r[key] for r in rs], "o-", label=name)
        ax.set_xlabel("w")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path)))
    plt.close(fig)
    return Path(path)


def save_labelled_grids(path: str | Path, rows: list[tuple[str, torch.Tensor]], scale: int = 4) -> Path:
    """One titled row of images per condition (e.g. `--type female --accessory earring`), stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ConfigError("no rows of images to draw")
    images = [np.asarray(grid_image(x, nrow=len(x), pad=1, scale=scale)) for _, x in rows]
    # wide enough for the longest title too (about 0.07 inch per character at 8 pt)
    width = max(max(img.shape[1] for img in images) / 100, 0.07 * max(len(t) for t, _ in rows))
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(width + 0.4, sum(i.shape[0] / 100 + 0.35 for i in images))
    )
    for ax, (title, _), img in zip(np.atleast_1d(axes), rows, images):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write_file(path, lambda f: fig.savefig(f, format=file_format(path), dpi=100))
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        plt.close(fig)
    return path
