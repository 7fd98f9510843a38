"""The one on-disk format of both classifier kinds: a folder with classifier.json + safetensors weights.

classifier.json (format "diffguide-classifier-3"):

    {"format": "diffguide-classifier-3",
     "kind": "points" | "images",
     "weights": "classifier.safetensors",   # the weights file beside it (no pickle)
     "architecture": {...},                 # the network's constructor arguments, typed per kind
     "data": {...},                         # the DataConfig it was trained on
     "training": {...}}                     # steps, batch size, lr, seed, results; per kind

`read_record` reads it, upgrades the two layouts written before (points "diffguide-classifier-2",
images "image-classifier" with "sizes"), and refuses a classifier of another kind than the caller
expects with a ConfigError naming the file, its kind and the expected one. The kind modules build
their network from `record.architecture`; `diffguide.classifiers.load_classifier` dispatches on kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffguide.config import from_dict
from diffguide.data.registry import DataConfig
from diffguide.errors import CheckpointError, ConfigError, lookup, output_error
from diffguide.io import atomic_save_tensors, atomic_write_text

FORMAT = "diffguide-classifier-3"
RECORD_FILE = "classifier.json"

# The weights file of each kind keeps the name it had before the common format: the dashboard finds
# classifier folders by these names (dashboard/catalog.py), and old folders keep loading unchanged.
# The record names its file, so one name for both can come later without a new format.
WEIGHTS_FILES = {"points": "classifier.safetensors", "images": "model.safetensors"}

# what each kind is, in words, and how to make one (for error messages)
KINDS = {
    "points": (
        "a noise-conditional classifier of 2D points",
        "train one with `diffguide train ... --with-classifier`",
    ),
    "images": (
        "an image feature classifier",
        "train one with `diffguide train-classifier --data NAME --out FOLDER`",
    ),
}


@dataclass
class ClassifierRecord:
    """What classifier.json holds, for both kinds (see the module docstring)."""

    format: str = FORMAT
    kind: str = ""  # "points" | "images": required
    weights: str = ""  # the weights file name; "" = the kind's default
    architecture: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    training: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes of the class head (0 for an attribute classifier: types and accessories instead)."""
        return int(self.architecture.get("num_classes", 0))

    @property
    def weights_file(self) -> str:
        """The weights file's name in the classifier folder."""
        return self.weights or WEIGHTS_FILES[self.kind]


def write_classifier(folder: str | Path, net: torch.nn.Module, record: ClassifierRecord) -> Path:
    """Write net's weights, then classifier.json (so a folder with a record has its weights), atomically."""
    folder = Path(folder)
    record = replace(record, format=FORMAT, weights=record.weights_file)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    try:
        atomic_save_tensors(folder / record.weights, state, {"format": FORMAT, "kind": record.kind})
        atomic_write_text(folder / RECORD_FILE, json.dumps(asdict(record), indent=2) + "\n")
    except OSError as e:
        raise output_error(folder, e) from None
    return folder


def read_record(folder: str | Path, expected: str | None = None) -> ClassifierRecord:
    """The record in folder/classifier.json (old layouts upgraded); ConfigError when its kind is not
    `expected` ("points" or "images"; None accepts both)."""
    folder = Path(folder)
    path = folder / RECORD_FILE
    what, how = (
        lookup("classifier kind", expected, KINDS) if expected else ("a classifier", "train one first")
    )
    if not path.is_file():
        raise CheckpointError(f"{str(folder)!r} is not a classifier folder: it has no {RECORD_FILE} ({how})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} is not {what} (a JSON object was expected, got {data!r:.60})")
    record = _parse(path, _upgrade(path, data, what))
    if expected is not None and record.kind != expected:
        raise ConfigError(
            f"{str(path)!r} is {KINDS[record.kind][0]} (kind {record.kind!r}), but {what} "
            f"(kind {expected!r}) is expected here; {how}"
        )
    return record


def _upgrade(path: Path, data: dict, what: str) -> dict:
    """A classifier.json of any known layout as the current one (a dict; checked by _parse)."""
    found = data.get("format")
    if found == FORMAT:
        return data
    if found == "diffguide-classifier-2":  # points, before the common format
        return _from_points_2(path, data)
    if found is None and data.get("kind") == "image-classifier":  # images, before the common format
        return _from_images_0(path, data)
    if found == "diffguide-classifier-1":
        raise CheckpointError(
            f"{str(path)!r} is a classifier of an older format ({found!r}, this version reads {FORMAT!r}: its "
            "logits are scaled for high noise); retrain it with `diffguide train ... --with-classifier`"
        )
    raise CheckpointError(f"{str(path)!r} is not {what} (format {found!r}, expected {FORMAT!r})")


def _from_points_2(path: Path, old: dict) -> dict:
    try:
        c = old["classifier"]
        sizes = {k: c[k] for k in ("width", "depth", "emb_dim", "sigma_data")}
        sizes = {"dim": old["dim"], "num_classes": old["num_classes"], **sizes}
        training = {k: c[k] for k in ("steps", "batch_size", "lr", "seed")}
        training.update(steps=old["step"], final_loss=old["final_loss"])
        training.update(noise=old["noise"], process=old["process"])
        data = old["data"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r} (format 'diffguide-classifier-2') lacks {e}") from None
    return {"kind": "points", "architecture": sizes, "data": data, "training": training}


def _from_images_0(path: Path, old: dict) -> dict:
    try:
        sizes, data = old["sizes"], old["data"]
    except KeyError as e:
        raise CheckpointError(f"{str(path)!r} (an image classifier of the first layout) lacks {e}") from None
    training = {k: old[k] for k in ("steps", "batch_size", "seed", "train_seconds", "heldout") if k in old}
    return {"kind": "images", "architecture": sizes, "data": data, "training": training}


def _parse(path: Path, data: dict) -> ClassifierRecord:
    try:
        record = from_dict(ClassifierRecord, {**data, "format": FORMAT})
    except ConfigError as e:  # a damaged or hand-edited file: say which
        raise CheckpointError(f"{str(path)!r}: {e}") from None
    if record.kind not in KINDS:
        raise CheckpointError(
            f"{str(path)!r}: unknown classifier kind {record.kind!r}; choices: {', '.join(KINDS)}"
        )
    name = record.weights
    # a file beside the record, nothing elsewhere: the dashboard checks the folder, not this name
    if name and (Path(name).name != name or name in (".", "..") or not name.endswith(".safetensors")):
        raise CheckpointError(
            f"{str(path)!r}: weights must name a .safetensors file in the same folder, got {name!r}"
        )
    return record


def architecture(record: ClassifierRecord, cls: type, folder: str | Path) -> Any:
    """record.architecture as the kind's typed dataclass `cls`; a bad entry names the file."""
    try:
        return from_dict(cls, record.architecture, prefix="architecture.")
    except ConfigError as e:
        raise CheckpointError(f"{str(Path(folder) / RECORD_FILE)!r}: {e}") from None


def load_weights(net: torch.nn.Module, folder: str | Path, record: ClassifierRecord) -> torch.nn.Module:
    """net with the folder's weights (safetensors, no pickle) and `net.record`, in eval mode."""
    weights = Path(folder) / record.weights_file
    if not weights.is_file():
        raise CheckpointError(
            f"{str(Path(folder))!r} is not a classifier folder: it needs {RECORD_FILE} and {record.weights_file}"
        )
    try:
        net.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as e:  # damaged file, or weights of other sizes
        raise CheckpointError(f"cannot load {str(weights)!r}: {e}") from None
    net.record = record
    return net.eval()
