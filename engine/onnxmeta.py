"""The facts an ONNX artifact carries, read and written in one place.

- the ``metadata_props`` keys this package writes (model config, weight fingerprint,
  precision, calibration record, FP16 conversion mode, format version) and their read/write;
- loading an ONNX file with a clear error for a missing, empty, truncated or foreign file;
- whether a graph is quantized, and which of its nodes are Q/DQ;
- the precision names, and the one rule that settles the precision an engine runs or builds
  a file at (:func:`resolve_precision`).

Everything above this module (export, calibration, every backend, serving) takes these
facts from here, so a key or a rule is never written twice.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import ArtifactError, UnsupportedPrecisionError

META_CONFIG = "inception.config"                 # JSON of the ModelConfig
META_WEIGHTS = "inception.weights_sha256"        # fingerprint of the exported state dict
META_PRECISION = "inception.precision"           # fp32 | fp16 | int8
META_FORMAT = "inception.format"                 # version of this metadata layout
META_CALIBRATION = "inception.calibration"       # JSON record written by calibration.quantize
META_FP16 = "inception.fp16"                     # keep_io_fp32 | io_fp16 (FP16 conversion)
FORMAT_VERSION = "1"

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_ALIASES = {"float32": "fp32", "f32": "fp32", "float": "fp32", "bfloat16": "bf16",
            "float16": "fp16", "half": "fp16", "f16": "fp16", "qdq": "int8"}

# The explicit-quantization pair every engine of this package reads and calibration writes.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Any op that means "this graph is already quantized" (ONNX Runtime's QOperator format too).
QUANT_OPS = QDQ_OPS | {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearConcat",
                       "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


# --------------------------------------------------------------------------- metadata
def set_metadata(proto, entries: Dict[str, object]) -> None:
    """Set (add or replace) string entries of ``proto.metadata_props``."""
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in entries.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            p = proto.metadata_props.add()
            p.key, p.value = k, str(v)


def metadata_props(proto) -> Dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def load_onnx(path, load_weights: bool = True):
    """Load an ONNX file with clear errors for a missing, truncated or non-ONNX file."""
    import onnx
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such file; export one with `inception-engine export "
                            "--model NAME --out model.onnx`")
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory; pass the ONNX model file")
    if p.stat().st_size == 0:
        raise ArtifactError(f"{p}: the file is empty; export it again")
    try:
        proto = onnx.load(str(p), load_external_data=load_weights)
    except Exception as e:  # protobuf raises DecodeError, onnx may raise others
        raise ArtifactError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e}); the file "
                            "may be truncated or of another format; export it again") from e
    if not proto.graph.node:
        raise ArtifactError(f"{p}: parsed as ONNX but holds no graph nodes; the file is not a "
                            "model (truncated or of another format)")
    return proto


def read_metadata(path_or_proto) -> dict:
    """Our metadata of an ONNX file or proto: ``{"config": ModelConfig | None, "precision",
    "weights_sha256": str | None, "props": {all metadata_props}}``.

    ``precision`` is the graph's own (:func:`file_precision`). A foreign ONNX file (no
    metadata) gives ``config=None``; it still runs on every engine.
    """
    from .models.registry import ModelConfig
    proto = path_or_proto if hasattr(path_or_proto, "graph") else load_onnx(path_or_proto, False)
    props = metadata_props(proto)
    cfg = None
    if META_CONFIG in props:
        try:
            cfg = ModelConfig.from_dict(json.loads(props[META_CONFIG]))
        except (ValueError, TypeError) as e:
            raise ArtifactError(f"the model's {META_CONFIG} metadata is not valid: {e}; export "
                                "the model again") from e
    return {"config": cfg, "precision": file_precision(proto, props),
            "weights_sha256": props.get(META_WEIGHTS), "props": props}


def calibration_info(props: Dict[str, str]) -> Optional[dict]:
    """Calibration method and source from the metadata (the ``inception.calibration`` JSON
    that ``calibration.quantize`` writes), or ``None`` for an unquantized file.

    Returns ``{"method", "source", "details"}``; ``details`` is the whole record.
    """
    raw = props.get(META_CALIBRATION)
    if raw is None:
        return None
    try:
        details = json.loads(raw)
    except ValueError:
        details = raw
    if not isinstance(details, dict):
        details = {"description": details}
    return {"method": details.get("method"),
            "source": details.get("dataset", details.get("source")),
            "details": details}


# --------------------------------------------------------------------------- quantized graphs
def qdq_nodes(proto) -> List[str]:
    """Names (or op types, for unnamed nodes) of the QuantizeLinear/DequantizeLinear nodes."""
    return [n.name or n.op_type for n in proto.graph.node if n.op_type in QDQ_OPS]


def is_quantized(proto) -> bool:
    """Whether the graph holds any quantization op (Q/DQ or a quantized operator)."""
    return any(n.op_type in QUANT_OPS for n in proto.graph.node)


def onnx_io(proto) -> Dict[str, List[dict]]:
    """Graph inputs (minus initializers) and outputs as ``{"name", "shape", "dtype"}``;
    symbolic or unknown dimensions are ``None``."""
    from onnx import helper
    inits = {i.name for i in proto.graph.initializer}

    def describe(vi):
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in t.shape.dim]
        dtype = str(helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else "float32"
        return {"name": vi.name, "shape": shape, "dtype": dtype}

    return {"inputs": [describe(v) for v in proto.graph.input if v.name not in inits],
            "outputs": [describe(v) for v in proto.graph.output]}


# --------------------------------------------------------------------------- precision
def normalize_precision(p: Optional[str]) -> Optional[str]:
    """``"FP16"``, ``"half"``, ``"float16"`` -> ``"fp16"``; ``None`` stays ``None``."""
    if p is None:
        return None
    q = _ALIASES.get(str(p).lower(), str(p).lower())
    if q not in PRECISIONS:
        raise UnsupportedPrecisionError(f"unknown precision {p!r}; valid: {', '.join(PRECISIONS)}")
    return q


def file_precision(proto, props: Optional[Dict[str, str]] = None) -> str:
    """The precision a graph holds: ``int8`` when it is quantized (whatever its metadata
    says), else the ``inception.precision`` entry (``fp16`` after FP16 conversion), else
    ``fp32``."""
    if is_quantized(proto):
        return "int8"
    props = metadata_props(proto) if props is None else props
    try:
        p = normalize_precision(props.get(META_PRECISION)) or "fp32"
    except UnsupportedPrecisionError:
        return "fp32"
    return "fp32" if p == "int8" else p   # int8 in the metadata but no Q/DQ: a plain graph


def resolve_precision(requested: Optional[str], file_prec: str, supported: Sequence[str],
                      backend: str, path="model.onnx") -> str:
    """The precision ``backend`` runs (or builds) the file at: ``requested``, or the file's own
    when ``None``, checked against the file and against ``supported``.

    The rule: a quantized graph runs as ``int8`` only, and ``int8`` needs a quantized graph
    (INT8 is calibration's job, never made up here); an FP16 graph runs as ``fp16`` only; an
    FP32 graph runs at any float precision the backend offers.
    """
    requested = normalize_precision(requested)
    file_prec = normalize_precision(file_prec) or "fp32"
    name = Path(str(path)).name
    if requested is None:
        requested = file_prec
    if requested == "int8" and file_prec != "int8":
        raise UnsupportedPrecisionError(
            f"{name} holds no QuantizeLinear/DequantizeLinear nodes, so it cannot run as int8 "
            "(INT8 comes only from explicit Q/DQ: TensorRT 11 has no implicit calibration). "
            f"Quantize it first: `inception-engine quantize {name} model.int8.onnx --calib "
            "DATA`, then use that file")
    if file_prec == "int8" and requested != "int8":
        raise UnsupportedPrecisionError(
            f"{name} is an INT8 (Q/DQ) graph; it runs and builds as int8 only (asked for "
            f"{requested}). Use precision='int8' (--precision int8), or the FP32 ONNX it was "
            f"quantized from for {requested}")
    if file_prec == "fp16" and requested != "fp16":
        raise UnsupportedPrecisionError(
            f"{name} is an FP16 graph; use precision='fp16', or the FP32 ONNX it was converted "
            f"from for {requested}")
    if requested not in supported:
        raise UnsupportedPrecisionError(
            f"the {backend} backend runs {', '.join(supported)}, not {requested}; pick one of "
            "those or another backend")
    return requested
