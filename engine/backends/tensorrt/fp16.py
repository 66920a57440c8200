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
scales) are left alone. Graphs with Q/DQ nodes are refused: INT8 plans are built from the
Q/DQ graph as it is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import UnsupportedGraphError

FP16_MAX = float(np.finfo(np.float16).max)
# (op_type, input index) that stay float32 in an FP16 graph
KEEP_FP32_INPUTS = {("Resize", 1), ("Resize", 2)}
META_PRECISION = "inception.precision"
META_FP16 = "inception.fp16"


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
    from onnx import TensorProto, helper, numpy_helper

    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            raise UnsupportedGraphError(
                f"node {n.name or n.op_type} is a {n.op_type}: this is an INT8 (Q/DQ) graph; "
                "build it with precision='int8', or convert the FP32 ONNX to FP16 instead")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in n.attribute):
            raise UnsupportedGraphError(
                f"node {n.name or n.op_type} ({n.op_type}) holds a subgraph; the FP16 conversion "
                "handles flat graphs only (every model of this package exports flat)")

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    g = model.graph
    stats = {"initializers": 0, "constants": 0, "clipped": 0}

    keep32 = set()
    for n in g.node:
        for i, name in enumerate(n.input):
            if (n.op_type, i) in KEEP_FP32_INPUTS and name:
                keep32.add(name)

    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            arr = numpy_helper.to_array(init)
            g.initializer[i].CopyFrom(numpy_helper.from_array(_to_fp16(arr, stats), init.name))
            stats["initializers"] += 1

    for n in g.node:
        if n.op_type == "Constant" and n.output[0] not in keep32:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    arr = numpy_helper.to_array(a.t)
                    a.t.CopyFrom(numpy_helper.from_array(_to_fp16(arr, stats), a.t.name))
                    stats["constants"] += 1
        elif n.op_type == "ConstantOfShape":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(a.t),
                                                                  stats), a.t.name))
        elif n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT and n.output[0] not in keep32:
                    a.i = TensorProto.FLOAT16

    inits = {i.name for i in g.initializer}
    graph_inputs = [v for v in g.input if v.name not in inits]
    if keep_io_fp32:
        new_nodes = []
        for v in graph_inputs:
            if v.type.tensor_type.elem_type != TensorProto.FLOAT:
                continue
            inner = _unique(g, f"{v.name}_fp16")
            for n in g.node:
                for k, name in enumerate(n.input):
                    if name == v.name:
                        n.input[k] = inner
            new_nodes.append(helper.make_node("Cast", [v.name], [inner], to=TensorProto.FLOAT16,
                                              name=f"{v.name}/CastToFp16"))
        tail = []
        for v in g.output:
            if v.type.tensor_type.elem_type != TensorProto.FLOAT:
                continue
            inner = _unique(g, f"{v.name}_fp16")
            for n in g.node:
                for k, name in enumerate(n.output):
                    if name == v.name:
                        n.output[k] = inner
                for k, name in enumerate(n.input):   # an output also read inside the graph
                    if name == v.name:
                        n.input[k] = inner
            tail.append(helper.make_node("Cast", [inner], [v.name], to=TensorProto.FLOAT,
                                         name=f"{v.name}/CastToFp32"))
        nodes = new_nodes + list(g.node) + tail
        del g.node[:]
        g.node.extend(nodes)
    else:
        for v in list(graph_inputs) + list(g.output):
            if v.type.tensor_type.elem_type == TensorProto.FLOAT:
                v.type.tensor_type.elem_type = TensorProto.FLOAT16

    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    _set_meta(model, {META_PRECISION: "fp16",
                      META_FP16: "keep_io_fp32" if keep_io_fp32 else "io_fp16"})
    onnx.checker.check_model(model)
    return model, stats


def _unique(graph, base: str) -> str:
    names = {v for n in graph.node for v in (*n.input, *n.output)}
    names |= {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    return name


def _set_meta(model, entries: dict):
    existing = {p.key: p for p in model.metadata_props}
    for k, v in entries.items():
        if k in existing:
            existing[k].value = v
        else:
            p = model.metadata_props.add()
            p.key, p.value = k, v


def convert_file(src, dst, keep_io_fp32: bool = True) -> dict:
    """Convert the FP32 ONNX file ``src`` to an FP16 ONNX file ``dst`` (written atomically)."""
    import onnx
    from ...onnxmeta import load_onnx
    from ...fileio import atomic_path
    model, stats = convert_to_fp16(load_onnx(src), keep_io_fp32=keep_io_fp32)
    with atomic_path(Path(dst)) as tmp:
        onnx.save(model, str(tmp))
    return stats
