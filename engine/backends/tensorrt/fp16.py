"""FP32 ONNX -> FP16 ONNX, with onnx and numpy only (no TensorRT).

TensorRT 11 builds strongly typed networks: a layer runs in the precision its tensors have
in the graph, and ``BuilderFlag.FP16`` no longer exists. An FP16 plan therefore starts from
an FP16 graph. The conversion:

- float32 initializers and ``Constant`` values become float16 (values beyond the float16
  range are clipped to +-65504 and counted, so an overflow is reported, not hidden);
- ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``;
- with ``keep_io_fp32=True`` (the default) the graph keeps float32 inputs and outputs:
  a ``Cast`` to float16 follows each input and a ``Cast`` to float32 precedes each output,
  so callers feed and read float32 as before; with ``False`` the I/O become float16;
- value types are recomputed by ONNX shape inference.

Inputs that ONNX requires to stay float32 whatever the data type (``Resize`` roi and
scales) are left alone. Quantized graphs (Q/DQ or quantized operators) are refused: INT8
plans are built from the Q/DQ graph as it is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import UnsupportedGraphError
from ...onnxmeta import (META_FP16, META_PRECISION, QUANT_OPS, is_quantized, load_onnx,
                         set_metadata)

FP16_MAX = float(np.finfo(np.float16).max)
# (op_type, input index) that stay float32 in an FP16 graph
KEEP_FP32_INPUTS = {("Resize", 1), ("Resize", 2)}


def _to_fp16(arr: np.ndarray, stats: dict) -> np.ndarray:
    over = np.abs(arr) > FP16_MAX
    stats["clipped"] += int(np.count_nonzero(over & np.isfinite(arr)))
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16) if over.any() \
        else arr.astype(np.float16)


def convert_to_fp16(proto, keep_io_fp32: bool = True):
    """A float16 copy of the FP32 ONNX model ``proto`` (see the module docstring).

    Returns ``(model, stats)``: stats counts converted initializers/constants and the
    values clipped to the float16 range.
    """
    import onnx
    _refuse_unconvertible(proto)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    stats = {"initializers": 0, "constants": 0, "clipped": 0}
    keep32 = _fp32_only_tensors(graph)
    _convert_initializers(graph, keep32, stats)
    _convert_nodes(graph, keep32, stats)
    if keep_io_fp32:
        _cast_at_io(graph)
    else:
        _io_to_fp16(graph)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    set_metadata(model, {META_PRECISION: "fp16",
                         META_FP16: "keep_io_fp32" if keep_io_fp32 else "io_fp16"})
    onnx.checker.check_model(model)
    return model, stats


def _refuse_unconvertible(proto) -> None:
    """Quantized graphs build as they are; graphs with subgraphs are beyond this conversion."""
    import onnx
    if is_quantized(proto):
        node = next(n for n in proto.graph.node if n.op_type in QUANT_OPS)
        raise UnsupportedGraphError(
            f"node {node.name or node.op_type} is a {node.op_type}: this is an INT8 (Q/DQ) "
            "graph; build it with precision='int8', or convert the FP32 ONNX to FP16 instead")
    for node in proto.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise UnsupportedGraphError(
                f"node {node.name or node.op_type} ({node.op_type}) holds a subgraph; the FP16 "
                "conversion handles flat graphs only (every model of this package exports flat)")


def _fp32_only_tensors(graph) -> set:
    """Names of the tensors ONNX requires to stay float32 (see ``KEEP_FP32_INPUTS``)."""
    return {name for node in graph.node for i, name in enumerate(node.input)
            if name and (node.op_type, i) in KEEP_FP32_INPUTS}


def _convert_initializers(graph, keep32: set, stats: dict) -> None:
    from onnx import TensorProto, numpy_helper
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            arr = _to_fp16(numpy_helper.to_array(init), stats)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
            stats["initializers"] += 1


def _convert_nodes(graph, keep32: set, stats: dict) -> None:
    """float32 ``Constant``/``ConstantOfShape`` values -> float16, ``Cast(to=FLOAT)`` ->
    ``Cast(to=FLOAT16)``."""
    from onnx import TensorProto, numpy_helper

    def float_values(node):
        return [a for a in node.attribute
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT]

    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in keep32:
            for a in float_values(node):
                a.t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(a.t), stats),
                                                     a.t.name))
                stats["constants"] += 1
        elif node.op_type == "ConstantOfShape":
            for a in float_values(node):
                a.t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(a.t), stats),
                                                     a.t.name))
        elif node.op_type == "Cast" and node.output[0] not in keep32:
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16


def _rename_uses(graph, old: str, new: str, outputs: bool) -> None:
    """Point every node input named ``old`` (and with ``outputs``, every node output) at
    ``new``."""
    for node in graph.node:
        fields = (node.input, node.output) if outputs else (node.input,)
        for field in fields:
            for k, name in enumerate(field):
                if name == old:
                    field[k] = new


def _cast_at_io(graph) -> None:
    """Keep float32 graph inputs and outputs: a Cast to float16 after each input, a Cast to
    float32 before each output (an output also read inside the graph is read as float16)."""
    from onnx import TensorProto, helper
    inits = {i.name for i in graph.initializer}
    head, tail = [], []
    for v in graph.input:
        if v.name in inits or v.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = _unique(graph, f"{v.name}_fp16")
        _rename_uses(graph, v.name, inner, outputs=False)
        head.append(helper.make_node("Cast", [v.name], [inner], to=TensorProto.FLOAT16,
                                     name=f"{v.name}/CastToFp16"))
    for v in graph.output:
        if v.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = _unique(graph, f"{v.name}_fp16")
        _rename_uses(graph, v.name, inner, outputs=True)
        tail.append(helper.make_node("Cast", [inner], [v.name], to=TensorProto.FLOAT,
                                     name=f"{v.name}/CastToFp32"))
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)


def _io_to_fp16(graph) -> None:
    from onnx import TensorProto
    inits = {i.name for i in graph.initializer}
    for v in [v for v in graph.input if v.name not in inits] + list(graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16


def _unique(graph, base: str) -> str:
    names = {v for n in graph.node for v in (*n.input, *n.output)}
    names |= {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    return name


def convert_file(src, dst, keep_io_fp32: bool = True) -> dict:
    """Convert the FP32 ONNX file ``src`` to an FP16 ONNX file ``dst`` (written atomically)."""
    import onnx
    from ...fileio import atomic_path
    model, stats = convert_to_fp16(load_onnx(src), keep_io_fp32=keep_io_fp32)
    with atomic_path(Path(dst)) as tmp:
        onnx.save(model, str(tmp))
    return stats
