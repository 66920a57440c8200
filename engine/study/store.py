"""The trial store: one file per finished trial under ``OUT/trials/``, named by the trial's
key (:func:`trial_key`), each written atomically.

A rerun with the same ``--out`` finds a trial's file and takes its row instead of measuring
it again; a trial whose inputs changed (another file, other test images, other options, a new
package version) has another key and is measured. An interrupted study leaves only whole
files: a trial is written after it finished, under a temporary name then renamed.
"""
from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..errors import InputError
from ..version import __version__
from .row import Row

# The calibration record's run time: it differs between two runs that write the same file,
# so it is no part of a file's identity
_RUN_TIME_FIELDS = {"inception.calibration": ("seconds",)}
_ONNX_METADATA_FIELD = 14       # ModelProto.metadata_props


def _varint(buf, i: int):
    shift = value = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _metadata_entry(raw: bytes) -> bytes:
    """One metadata entry as hashed: its run-time fields dropped."""
    import onnx
    entry = onnx.StringStringEntryProto.FromString(raw)
    drop = _RUN_TIME_FIELDS.get(entry.key)
    if not drop:
        return raw
    try:
        record = json.loads(entry.value)
    except ValueError:
        return raw
    for name in drop:
        record.pop(name, None)
    return (entry.key + "\0" + json.dumps(record, sort_keys=True)).encode()


def _onnx_digest(path: Path, h) -> None:
    """Feed ``h`` with the ONNX file's top-level fields as stored, its metadata entries
    without their run-time fields (:data:`_RUN_TIME_FIELDS`). Only the top level is walked
    (the graph is hashed as its bytes), so this costs about one read of the file."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        i, n = 0, len(buf)
        while i < n:
            start = i
            tag, i = _varint(buf, i)
            wire = tag & 7
            if wire == 0:
                _, i = _varint(buf, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                size, i = _varint(buf, i)
                i += size
            else:
                raise InputError(f"{path}: not an ONNX file (protobuf wire type {wire})")
            if i > n:
                raise InputError(f"{path}: truncated ONNX file")
            if tag >> 3 == _ONNX_METADATA_FIELD and wire == 2:
                payload_start = i - size
                h.update(_metadata_entry(bytes(buf[payload_start:i])))
            else:
                h.update(buf[start:i])


def file_digest(path) -> str:
    """The content hash of a model file, as a trial's key uses it: an ONNX file by its fields
    (run-time fields of its metadata left out), an OpenVINO IR by its ``.xml`` and ``.bin``,
    anything else by its bytes."""
    from ..fileio import sha256_file
    path = Path(path)
    if path.suffix == ".onnx":
        h = hashlib.sha256()
        _onnx_digest(path, h)
        return h.hexdigest()
    parts = [sha256_file(path)]
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():
        parts.append(sha256_file(weights))
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def data_digest(*arrays: np.ndarray) -> str:
    """The hash of the images and labels a trial is measured on (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def trial_key(identity: dict, files: Dict[str, Optional[str]], data: str, options: dict) -> str:
    """A trial's stable key: what it is (``identity``), the content hash of each file it
    measures, the data's hash, the measuring options and the package version."""
    record = {"trial": identity, "files": files, "data": data, "options": options,
              "version": __version__}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()
                          ).hexdigest()[:32]


def _row_record(row: Row) -> dict:
    record = asdict(row)
    pred = record.pop("pred")
    record["pred"] = None if pred is None else np.asarray(pred).astype(int).tolist()
    return record


def _row_of(record: dict) -> Row:
    record = dict(record)
    pred = record.pop("pred", None)
    row = Row(**record)
    row.pred = None if pred is None else np.asarray(pred, np.int64)
    return row


class TrialStore:
    """The finished trials of one study folder (``folder``: ``OUT/trials``)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> Optional[Row]:
        """The stored row of trial ``key``, or None when it has not finished here."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            return _row_of(record["row"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a trial file of this study ({e}); delete it, or "
                             "rerun with --force") from e

    def save(self, key: str, identity: dict, row: Row) -> Path:
        """Write trial ``key``'s row, atomically."""
        from ..fileio import atomic_write_text
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "trial": identity, "row": _row_record(row)}
        atomic_write_text(self.path(key), json.dumps(record) + "\n")
        return self.path(key)
