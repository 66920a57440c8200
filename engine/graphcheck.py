"""Checks an ONNX graph passes before any engine parses it.

Engines trust the graph they are given: OpenVINO dies with SIGSEGV on a ``Conv`` without a
weight input, and both CPU engines run a conv with a stride of -1 and return an empty
array. :func:`check_onnx` refuses such a file with an :class:`InvalidGraphError` naming
the file and the node, in this order:

1. the ``ai.onnx`` opset is one the engine reads (:class:`GraphSupport` ``opsets``);
2. each node: its op type exists at that opset and the engine runs it, its input and output
   counts fit the operator's schema, every input it reads is produced before it;
3. attribute values the ONNX checker lets through but that crash or silently break engines
   (non-positive strides, kernel shapes, dilations or groups, negative pads);
4. each initializer's data matches its declared dims;
5. the full ONNX checker with strict shape inference (what ``onnx.checker.check_model(
   full_check=True)`` runs: types and shapes through the whole graph), its exceptions
   wrapped;
6. the shapes inference settled: no dimension below 1 (an input too small for the network
   makes OpenVINO die with SIGFPE), and each Conv's channels agree with its weight and bias.

A verdict is cached in this process by the file's content (sha256; the digest itself is
reused while the file's size and modification time stay the same), so loading the same
model again costs a ``stat``. Nothing is written next to the model. Two threads loading
the same new file at once may both run the checks; the verdict is the same.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Tuple

from .errors import ArtifactError, InvalidGraphError
from .fileio import sha256_file
from .onnxmeta import load_onnx

DEFAULT_DOMAINS = ("", "ai.onnx")
REEXPORT = "re-export the model with `inception-engine export --opset 17`"

# Spatial attributes of the conv and pool operators: each value must be at least this.
_MIN_VALUE = {"strides": 1, "kernel_shape": 1, "dilations": 1, "pads": 0,
              "output_padding": 0, "output_shape": 1}
_SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv",
                          "MaxPool", "AveragePool", "LpPool", "MaxUnpool"})
_AUTO_PAD = frozenset({"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"})


@dataclass(frozen=True)
class GraphSupport:
    """What one engine reads from an ONNX graph.

    opsets: the ``ai.onnx`` opset range, inclusive. ops: the ``ai.onnx`` op types it runs;
    ``None`` for every standard operator. domains: other operator domains whose nodes it
    runs (checked by the engine itself, since the ONNX checker does not know them).
    """

    opsets: Tuple[int, int]
    ops: Optional[FrozenSet[str]] = None
    domains: FrozenSet[str] = frozenset()


class _Refusal(Exception):
    """One failed rule: what is wrong, where (a node or the graph), and what to do."""

    def __init__(self, what: str, node=None, todo: str = REEXPORT):
        super().__init__(what)
        self.text = f"{_where(node)}{what}; {todo}"


# --------------------------------------------------------------------------- entry point
_DIGESTS: Dict[Tuple[str, int, int], str] = {}                       # stat key -> sha256
_VERDICTS: Dict[Tuple[str, GraphSupport, str], Optional[str]] = {}   # -> None or refusal


def check_onnx(path, support: GraphSupport, engine: str) -> None:
    """Raise :class:`InvalidGraphError` unless the ONNX file at ``path`` passes every check
    for ``engine`` (a backend name, used in messages); a verdict is reused for the same
    content. A missing, empty or unreadable file is an ``ArtifactError`` from
    :func:`engine.onnxmeta.load_onnx`.
    """
    path = Path(path)
    key = (_content_digest(path), support, engine)
    if key not in _VERDICTS:
        _VERDICTS[key] = _verdict(path, support, engine)
    refusal = _VERDICTS[key]
    if refusal is not None:
        raise InvalidGraphError(f"{path}: {refusal}")


def cached_verdicts() -> int:
    """How many verdicts this process holds (for tests and diagnostics)."""
    return len(_VERDICTS)


def _content_digest(path: Path) -> str:
    """The file's sha256, hashed again only when its size or modification time changed."""
    try:
        st = path.stat()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read the model file ({e.strerror}); check the "
                            "path") from e
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _verdict(path: Path, support: GraphSupport, engine: str) -> Optional[str]:
    """``None`` when the file passes, else the refusal text (without the file name)."""
    proto = load_onnx(path, load_weights=False)
    try:
        opset = _check_opsets(proto, support, engine)
        _check_nodes(proto, opset, support, engine)
        _check_initializers(proto.graph)
        _check_shapes(_run_onnx_checker(path, proto))
    except _Refusal as r:
        return r.text
    return None


# --------------------------------------------------------------------------- rules
def _check_opsets(proto, support: GraphSupport, engine: str) -> int:
    """The ``ai.onnx`` opset of the model, if ``engine`` reads it."""
    import onnx
    versions = {o.domain: o.version for o in proto.opset_import}
    opset = next((versions[d] for d in DEFAULT_DOMAINS if d in versions), None)
    if opset is None:
        raise _Refusal("the model imports no ai.onnx opset")
    low, high = support.opsets[0], min(support.opsets[1], onnx.defs.onnx_opset_version())
    if not low <= opset <= high:
        age = "too old" if opset < low else "newer than this installation reads"
        raise _Refusal(f"ai.onnx opset {opset} is {age} (the {engine} engine reads opsets "
                       f"{low} to {high})")
    return opset


def _check_nodes(proto, opset: int, support: GraphSupport, engine: str) -> None:
    """Op type, arity, wiring and attribute rules for every top-level node, in order."""
    graph = proto.graph
    known = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        schema = _schema(node, opset, support, engine)
        if schema is not None:
            _check_arity(node, schema)
        for name in node.input:
            if name and name not in known:
                raise _Refusal(f"reads {name!r}, which no graph input, initializer or "
                               "earlier node produces", node)
        for name in node.output:
            if name and name in known:
                raise _Refusal(f"writes {name!r}, which is already defined (every tensor "
                               "has one producer)", node)
            known.add(name)
        _check_attributes(node)
    for out in graph.output:
        if out.name not in known:
            raise _Refusal(f"the graph output {out.name!r} is produced by no node")


def _schema(node, opset: int, support: GraphSupport, engine: str):
    """The operator schema of ``node`` (``None`` for a custom domain the engine runs)."""
    from onnx import defs
    if node.domain not in DEFAULT_DOMAINS:
        if node.domain not in support.domains:
            raise _Refusal(f"op domain {node.domain!r} is not one the {engine} engine runs "
                           f"({', '.join(('ai.onnx',) + tuple(sorted(support.domains)))})",
                           node)
        return None
    try:
        schema = defs.get_schema(node.op_type, opset, "")
    except defs.SchemaError:
        raise _Refusal(f"{node.op_type!r} is not an ONNX operator at opset {opset}", node,
                       "replace the node, or " + REEXPORT) from None
    if support.ops is not None and node.op_type not in support.ops:
        raise _Refusal(f"the {engine} engine does not run op type {node.op_type}", node,
                       "run the file on another backend (engine.load(path, backend=...)), "
                       "or " + REEXPORT)
    return schema


def _check_arity(node, schema) -> None:
    """Input and output counts within the schema; no empty name for a required input."""
    from onnx.defs import OpSchema
    n_in, n_out = len(node.input), len(node.output)
    if not schema.min_input <= n_in <= schema.max_input:
        raise _Refusal(f"has {n_in} inputs; {node.op_type} takes "
                       f"{_count(schema.min_input, schema.max_input)}", node)
    if not schema.min_output <= n_out <= schema.max_output:
        raise _Refusal(f"has {n_out} outputs; {node.op_type} gives "
                       f"{_count(schema.min_output, schema.max_output)}", node)
    single = OpSchema.FormalParameterOption.Single
    for formal, name in zip(schema.inputs, node.input):
        if formal.option == single and not name:
            raise _Refusal(f"its required input {formal.name} is empty", node)


def _check_attributes(node) -> None:
    """Spatial attributes of conv and pool nodes: positive sizes, non-negative pads,
    consistent ranks; ``group`` >= 1; a known ``auto_pad``."""
    if node.op_type not in _SPATIAL_OPS or node.domain not in DEFAULT_DOMAINS:
        return
    attrs = _attributes(node)
    ranks = {}
    for name, least in _MIN_VALUE.items():
        if name not in attrs:
            continue
        values = _int_list(attrs[name], name, node)
        bad = [v for v in values if v < least]
        if bad:
            need = "positive" if least == 1 else "non-negative"
            raise _Refusal(f"attribute {name}={values} holds {bad[0]}; every value must be "
                           f"{need}", node)
        ranks[name] = len(values) // 2 if name == "pads" else len(values)
    if "pads" in attrs and len(attrs["pads"]) % 2:
        raise _Refusal(f"attribute pads={list(attrs['pads'])} has an odd length; it holds a "
                       "begin and an end per spatial axis", node)
    if len(set(ranks.values())) > 1:
        raise _Refusal("spatial attributes of different ranks (" + ", ".join(
            f"{k}: {v} axes" for k, v in ranks.items()) + ")", node)
    if "group" in attrs and _int(attrs["group"], "group", node) < 1:
        raise _Refusal(f"attribute group={attrs['group']}; it must be at least 1", node)
    pad = attrs.get("auto_pad", b"NOTSET")
    pad = pad.decode(errors="replace") if isinstance(pad, bytes) else str(pad)
    if pad not in _AUTO_PAD:
        raise _Refusal(f"attribute auto_pad={pad!r}; it must be one of "
                       f"{', '.join(sorted(_AUTO_PAD))}", node)


def _check_initializers(graph) -> None:
    """Each initializer's dims are non-negative and its data fills exactly those dims."""
    for init in graph.initializer:
        dims = list(init.dims)
        if any(d < 0 for d in dims):
            raise _Refusal(f"the initializer {init.name!r} has negative dims {dims}")
        mismatch = _data_mismatch(init)
        if mismatch:
            raise _Refusal(f"the initializer {init.name!r} declares dims {dims} but "
                           f"{mismatch}")


def _data_mismatch(init) -> Optional[str]:
    """How the initializer's stored data disagrees with its dims, or ``None`` (also when
    the data is not countable here: external data, packed sub-byte or string types)."""
    from onnx import TensorProto, helper
    expected = 1
    for d in init.dims:
        expected *= d
    if (init.data_location == TensorProto.EXTERNAL or init.data_type == TensorProto.STRING
            or init.data_type in _packed_types()):
        return None
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        field = helper.tensor_dtype_to_field(init.data_type)
    except (KeyError, ValueError, TypeError):
        return f"has an unknown data type {init.data_type}"
    if init.HasField("raw_data"):
        held, wanted = len(init.raw_data), expected * itemsize
        return None if held == wanted else f"holds {held} bytes of data, not {wanted}"
    per_element = 2 if init.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
    held, wanted = len(getattr(init, field)), expected * per_element
    return None if held == wanted else f"holds {held} values in {field}, not {wanted}"


@functools.lru_cache(maxsize=1)
def _packed_types() -> FrozenSet[int]:
    """Element types stored several to a byte (their counts are not checked here)."""
    from onnx import TensorProto
    names = ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    return frozenset(getattr(TensorProto, n) for n in names if hasattr(TensorProto, n))


def _run_onnx_checker(path: Path, proto):
    """The full ONNX checker, as ``check_model(full_check=True)`` runs it: the model checks,
    then strict shape inference (with data propagation, for computed shapes). Returns the
    model with its inferred shapes; every exception of either step is wrapped."""
    import onnx
    from onnx import TensorProto
    external = any(i.data_location == TensorProto.EXTERNAL for i in proto.graph.initializer)
    try:
        # With external data the checker needs the file's path to find the data files.
        onnx.checker.check_model(str(path) if external else proto)
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except Exception as e:  # ValidationError, InferenceError, and C++ errors as others
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _Refusal(f"the ONNX checker refuses the graph ({type(e).__name__}: "
                       f"{first[:600]})", _node_in_message(str(e), proto)) from None


def _check_shapes(inferred) -> None:
    """Every tensor shape that inference settled has positive dims, and each Conv's
    channels agree with its weight and bias (strict inference checks neither)."""
    graph = inferred.graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes.setdefault(value.name, _dims(value))
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name not in initializers and any(isinstance(d, int) and d < 1
                                                  for d in shapes[value.name]):
            raise _Refusal(f"the graph input {value.name!r} declares shape "
                           f"{shapes[value.name]}; every dimension must be positive or symbolic")
    for node in graph.node:
        for name in node.output:
            dims = shapes.get(name) or []
            if any(isinstance(d, int) and d < 1 for d in dims):
                raise _Refusal(f"its output {name!r} has shape {dims}: the input is smaller "
                               "than the network needs, or a shape, stride or kernel is wrong",
                               node)
        if node.op_type == "Conv" and node.domain in DEFAULT_DOMAINS:
            _check_conv_channels(node, shapes)


def _check_conv_channels(node, shapes) -> None:
    """A fixed weight shape; input channels = weight channels x group; output channels
    divisible by the group and equal to the bias length (where those shapes are known)."""
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    bias = shapes.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if not w:
        return
    if len(w) < 3 or not all(isinstance(d, int) for d in w):
        raise _Refusal(f"has a weight of shape {w}; a Conv weight must have a fixed shape "
                       "[out channels, in channels / group, kernel...]", node)
    group = _attributes(node).get("group", 1)
    c_in = x[1] if x and len(x) > 1 and isinstance(x[1], int) else None
    if w[0] % group or (c_in is not None and c_in != w[1] * group):
        raise _Refusal(f"reads {c_in if c_in is not None else '?'} channels with a weight of "
                       f"shape {w} and group={group}; the input channels must equal "
                       f"{w[1]} x group and {w[0]} output channels must divide by the group",
                       node)
    if bias is not None and bias != [w[0]]:
        raise _Refusal(f"has a bias of shape {bias} for {w[0]} output channels", node)


# --------------------------------------------------------------------------- helpers
_NODE_PATTERNS = (re.compile(r"node name: ([^)\s,]+)"), re.compile(r"node: name: (\S+)"),
                  re.compile(r"Node \(([^)]*)\)"))


def _node_in_message(message: str, proto):
    """The node the ONNX checker's message names, if any."""
    by_name = {n.name: n for n in proto.graph.node if n.name}
    for pattern in _NODE_PATTERNS:
        for found in pattern.findall(message):
            if found in by_name:
                return by_name[found]
    return None


def _attributes(node) -> dict:
    from onnx import helper
    try:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}
    except Exception as e:  # an attribute whose type field does not match its value
        raise _Refusal(f"holds an unreadable attribute ({type(e).__name__}: {e})",
                       node) from None


def _dims(value_info) -> list:
    """Dims of a tensor value: ints where known, the symbol (or None) elsewhere."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def _where(node) -> str:
    if node is None:
        return ""
    return f"node {node.name or '(unnamed)'!r} (op type {node.op_type}): "


def _count(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return f"{low} or more" if high > 1 << 20 else f"{low} to {high}"


def _int_list(value, name: str, node) -> list:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise _Refusal(f"attribute {name} must be a list of integers, got {value!r}", node)
    return list(value)


def _int(value, name: str, node) -> int:
    if not isinstance(value, int):
        raise _Refusal(f"attribute {name} must be an integer, got {value!r}", node)
    return value

