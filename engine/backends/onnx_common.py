"""What the ONNX-consuming backends share: reading the file's metadata and precision, and
settling the precision a runtime will run at."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..errors import ArtifactError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_ALIASES = {"float32": "fp32", "f32": "fp32", "float": "fp32", "bfloat16": "bf16",
            "float16": "fp16", "half": "fp16", "f16": "fp16", "qdq": "int8"}
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger",
              "MatMulInteger", "QLinearMatMul"}


def normalize_precision(p: Optional[str]) -> Optional[str]:
    if p is None:
        return None
    q = _ALIASES.get(str(p).lower(), str(p).lower())
    if q not in PRECISIONS:
        raise ValueError(f"unknown precision {p!r}; valid: {', '.join(PRECISIONS)}")
    return q


def graph_precision(proto) -> str:
    """``int8`` when the graph holds quantization nodes, else ``fp32``."""
    return "int8" if any(n.op_type in _QUANT_OPS for n in proto.graph.node) else "fp32"


def onnx_info(path) -> dict:
    """``{"config", "precision", "props", "weights_sha256"}`` of an ONNX file.

    Missing, empty, truncated and non-ONNX files raise :class:`ArtifactError`. The precision
    comes from our metadata (``inception.precision``); a foreign file's is read off its graph.
    """
    from ..onnxmeta import META_PRECISION, read_metadata, load_onnx
    path = Path(path)
    proto = load_onnx(path, load_weights=False)
    meta = read_metadata(proto)
    if META_PRECISION not in meta["props"]:
        meta["precision"] = graph_precision(proto)
    meta["precision"] = normalize_precision(meta["precision"])
    return meta


def resolve_precision(requested: Optional[str], file_precision: str, backend: str,
                      supported: Sequence[str]) -> str:
    """The precision to run at: the requested one, checked against the file and the backend.

    An INT8 (Q/DQ) file runs as INT8; FP32 files run as fp32, bf16 or fp16 where the backend
    offers it. INT8 is never made up from an FP32 file here: that is calibration's job.
    """
    requested = normalize_precision(requested)
    file_precision = normalize_precision(file_precision) or "fp32"
    if requested is None:
        requested = file_precision
    if file_precision == "int8" and requested != "int8":
        raise ArtifactError(f"the file is an INT8 (Q/DQ) model; it runs as int8 only "
                            f"(asked for {requested}); run the FP32 export for {requested}")
    if requested == "int8" and file_precision != "int8":
        raise ArtifactError("precision int8 needs a Q/DQ ONNX written by calibration "
                            "(`inception-engine quantize MODEL.onnx --out MODEL.int8.onnx`); "
                            "this file is FP32")
    if requested not in supported:
        raise ValueError(f"the {backend} backend runs {', '.join(supported)}, not {requested}")
    return requested
