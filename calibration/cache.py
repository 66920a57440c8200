"""TensorRT calibration cache: the text format of ``IInt8EntropyCalibrator2`` and friends.

Layout (what TensorRT 7-10 write and read, and what NVIDIA ModelOpt exports)::

    TRT-8601-EntropyCalibration2
    input: 3c010a14
    /conv2d_1a/relu/Relu_output_0: 3d8e7a2b

The first line is ``TRT-<version>-<algorithm>``; each further line maps a tensor name to its
per-tensor *scale* (``amax / 127``) as the big-endian IEEE-754 float32 bit pattern in hex.
Tensor names may contain ``:``, so a line is split at its last ``": "``.

TensorRT 11 dropped implicit INT8 calibration, so the Q/DQ ONNX is the INT8 path there; the
cache stays useful to move scales to and from older TensorRT stacks and ModelOpt.

NVIDIA ModelOpt (``modelopt.onnx.quantization.quantize(..., calibration_cache_path=CACHE)``)
reads this format and puts each scale on the ``QuantizeLinear`` of that tensor. Its ONNX path
writes no cache: what it calibrates ends up as the scales of the Q/DQ ONNX it writes, which
:func:`cache_from_qdq` turns into a cache (``calibration.quantize(scales=...)`` takes it).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

from .errors import CacheError

DEFAULT_VERSION = "8601"          # TensorRT 8.6.1, the last stack with implicit calibration
DEFAULT_ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z]+Calibration\d*)$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


def scale_to_hex(scale: float) -> str:
    """Float32 scale -> 8 hex digits of its big-endian bit pattern (``0.0078452 -> 3c008912``)."""
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> float:
    """8 hex digits (big-endian float32 bit pattern) -> the float scale."""
    if not _HEX.match(text):
        raise ValueError(f"{text!r} is not 8 hex digits")
    return struct.unpack(">f", bytes.fromhex(text))[0]


def check_version(version) -> None:
    """A cache's TensorRT version is written as digits only (8601 for 8.6.1)."""
    if not re.fullmatch(r"\d+", str(version)):
        raise CacheError(f"cache version {version!r} must be digits (e.g. 8601 for 8.6.1)")


@dataclass
class CalibrationCache:
    """Per-tensor scales (``amax / 127``) keyed by ONNX tensor name, with the header fields."""

    scales: Dict[str, float] = field(default_factory=dict)
    version: str = DEFAULT_VERSION
    algorithm: str = DEFAULT_ALGORITHM

    def amax(self) -> Dict[str, float]:
        """The scales as calibration ranges (``scale * 127``)."""
        return {k: v * 127.0 for k, v in self.scales.items()}

    @classmethod
    def from_amax(cls, amax: Dict[str, float], **kw) -> "CalibrationCache":
        return cls({k: float(v) / 127.0 for k, v in amax.items()}, **kw)

    def to_text(self) -> str:
        check_version(self.version)
        lines = [f"TRT-{self.version}-{self.algorithm}"]
        for name, scale in self.scales.items():
            if "\n" in name:
                raise CacheError(f"tensor name {name!r} holds a newline; it cannot go in a cache")
            lines.append(f"{name}: {scale_to_hex(scale)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> "CalibrationCache":
        lines = text.splitlines()
        header = lines[0].strip() if lines else ""
        m = _HEADER.match(header)
        if not m:
            raise CacheError(
                f"{source}: not a TensorRT calibration cache: the first line is {header[:80]!r}, "
                f"expected 'TRT-<version>-<Algorithm>' such as 'TRT-8601-EntropyCalibration2'")
        scales: Dict[str, float] = {}
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            name, sep, value = line.rstrip().rpartition(": ")
            if not sep or not name:
                raise CacheError(f"{source}, line {lineno}: {line[:80]!r} is not "
                                 "'tensor_name: <8 hex digits>'")
            try:
                scale = hex_to_scale(value.strip())
            except ValueError:
                raise CacheError(f"{source}, line {lineno}: scale {value.strip()[:40]!r} of tensor "
                                 f"{name!r} is not 8 hex digits (a big-endian float32); the cache "
                                 "is corrupt, write it again") from None
            if not (scale > 0 and scale < float("inf")):
                raise CacheError(f"{source}, line {lineno}: tensor {name!r} has scale {scale}; "
                                 "scales must be positive and finite")
            scales[name] = scale
        return cls(scales, m.group(1), m.group(2))


def write_cache(path, scales, version: str = DEFAULT_VERSION,
                algorithm: str = DEFAULT_ALGORITHM) -> Path:
    """Write ``scales`` (a dict tensor -> scale, or a :class:`CalibrationCache`) atomically."""
    from engine.fileio import atomic_write_text
    cache = scales if isinstance(scales, CalibrationCache) else \
        CalibrationCache(dict(scales), str(version), algorithm)
    atomic_write_text(path, cache.to_text())
    return Path(path)


def read_cache(path) -> CalibrationCache:
    """Read a cache file; a missing file, a wrong header or a corrupt line is a CacheError."""
    p = Path(path)
    if p.is_dir():
        raise CacheError(f"{p} is a directory, not a calibration cache; pass the cache file "
                         "inside it")
    if not p.is_file():
        raise CacheError(f"{p}: no such calibration cache; write one with `inception-engine "
                         "quantize IN.onnx OUT.onnx --calib DATA --cache FILE`, or check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CacheError(f"{p}: not a text calibration cache ({e}); TensorRT's cache is text "
                         "starting with 'TRT-<version>-EntropyCalibration2'") from e
    return CalibrationCache.from_text(text, str(p))


def qdq_activation_scales(model) -> Dict[str, float]:
    """``{tensor: scale}`` of every activation ``QuantizeLinear`` (one whose input is not an
    initializer) of a Q/DQ ONNX model (a path or a ModelProto): ours, or one ModelOpt or
    ONNX Runtime wrote. Per-tensor (scalar) scales only; a tensor quantized twice with two
    different scales is a :class:`CacheError`."""
    from onnx import numpy_helper
    from engine.onnxmeta import load_onnx
    proto = load_onnx(model) if isinstance(model, (str, Path)) else model
    inits = {i.name: i for i in proto.graph.initializer}
    scales: Dict[str, float] = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        if node.input[1] not in inits:
            raise CacheError(f"QuantizeLinear {node.name!r}: its scale {node.input[1]!r} is not "
                             "an initializer; fold the graph's constants first")
        value = numpy_helper.to_array(inits[node.input[1]])
        if value.size != 1:
            raise CacheError(f"QuantizeLinear {node.name!r} on activation {node.input[0]!r} has "
                             f"{value.size} scales; a calibration cache holds one per tensor")
        scale = float(value.reshape(()))
        if scales.get(node.input[0], scale) != scale:
            raise CacheError(f"tensor {node.input[0]!r} is quantized with two scales "
                             f"({scales[node.input[0]]} and {scale}); a cache holds one")
        scales[node.input[0]] = scale
    return scales


def cache_from_qdq(model, version: str = DEFAULT_VERSION,
                   algorithm: str = DEFAULT_ALGORITHM) -> CalibrationCache:
    """The activation scales of a Q/DQ ONNX model as a :class:`CalibrationCache`."""
    return CalibrationCache(qdq_activation_scales(model), str(version), algorithm)
