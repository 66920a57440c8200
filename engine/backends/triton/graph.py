"""ONNX graph -> layer list: read, fold and fuse what the kernels run as one launch.

The result is a flat, topologically ordered list of :class:`Layer` s over named values
(ONNX tensor names). What is folded here (all in FP32 numpy, once, at compile time):

- ``Conv -> Relu``, ``Conv -> Add(shortcut) [-> Relu]`` (the residual epilogue), a ``Mul`` by
  a scalar constant after a Conv (the residual scale of foreign exports) into the conv's
  weights and bias, a ``BatchNormalization`` after a Conv / Gemm / MatMul into its weights;
- ``GlobalAveragePool -> Flatten`` (or ``ReduceMean`` over H, W) into one global pool;
- ``Gemm`` / ``MatMul (+ Add bias)`` into a linear layer;
- ``F.normalize`` as exported (``ReduceL2 -> Clip -> Expand(Shape) -> Div``) or
  ``LpNormalization`` into one L2-normalise layer;
- Q/DQ: ``DequantizeLinear`` of an int8 initializer (or a ``QuantizeLinear -> DequantizeLinear``
  pair on a float initializer) becomes an int8 weight with its per-channel scales; an
  activation ``QuantizeLinear -> DequantizeLinear`` pair becomes a ``quant`` layer (fake
  quantisation with one per-tensor scale), which the planner then fuses into the producer's
  epilogue (requantised int8 output) and the consumer's int8 GEMM.

Anything else is an :class:`~engine.errors.UnsupportedGraphError` naming the node and op type.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ...errors import UnsupportedGraphError


@dataclass
class QWeight:
    """Symmetric int8 weight: ``w = q * scale[:, None, ...]`` (per output channel, axis 0)."""

    q: np.ndarray           # int8, same shape as the float weight
    scale: np.ndarray       # float32 [C_out]

    def dequantize(self) -> np.ndarray:
        s = self.scale.reshape((-1,) + (1,) * (self.q.ndim - 1))
        return (self.q.astype(np.float32) * s).astype(np.float32)


def follow_aliases(alias: Dict[str, str], name: str) -> str:
    """The name at the end of ``name``'s alias chain (a tensor that only renames another:
    Identity, Flatten of a flat value, a merged Q/DQ pair)."""
    while name in alias:
        name = alias[name]
    return name


class ReadsValues:
    """``reads``: the values an operation reads, its inputs then the residual shortcut if
    any; shared by the graph's layers and the plan's steps, which both carry the two."""

    inputs: List[str]
    residual: Optional[str]

    @property
    def reads(self) -> List[str]:
        return self.inputs + ([self.residual] if self.residual else [])


@dataclass
class Layer(ReadsValues):
    """One fused operation of the plan.

    kind: ``conv`` | ``maxpool`` | ``avgpool`` | ``gap`` | ``linear`` | ``concat`` |
    ``quant`` | ``l2norm``. ``inputs`` are value names (the conv's residual shortcut is
    ``residual``, not an input). ``nodes`` lists the ONNX nodes folded into this layer.
    """

    kind: str
    name: str                      # ONNX name of the anchor node (the Conv, the Concat, ...)
    inputs: List[str]
    output: str
    nodes: List[str] = field(default_factory=list)
    weight: Optional[np.ndarray] = None      # float32 conv [Co, Ci, kh, kw] or linear [Co, Ci]
    qweight: Optional[QWeight] = None        # int8 weight (Q/DQ graphs); weight is then None
    bias: Optional[np.ndarray] = None        # float32 [Co]
    relu: bool = False
    residual: Optional[str] = None
    attrs: Dict = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        w = self.weight if self.weight is not None else self.qweight.q
        return int(w.shape[0])

    def float_weight(self) -> np.ndarray:
        return self.weight if self.weight is not None else self.qweight.dequantize()


@dataclass
class LayerGraph:
    layers: List[Layer]
    input: str
    input_shape: Tuple[int, int, int]        # C, H, W (batch is dynamic)
    output: str
    output_name: str                         # the ONNX graph output's name
    names: Dict[str, str]                    # ONNX tensor name -> value name it equals
    quantized: bool                          # the graph holds Q/DQ nodes


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(node, why: str):
    return UnsupportedGraphError(
        f"node {node.name or '(unnamed)'!r} (op type {node.op_type}): {why}. The triton engine "
        "runs the exported Inception graphs (Conv, Relu, Add, Mul by a constant, Concat, MaxPool, "
        "AveragePool, GlobalAveragePool, Flatten, Gemm/MatMul, BatchNormalization after a "
        "Conv/Gemm, L2 normalisation, symmetric int8 Q/DQ); run this file on the onnxruntime "
        "backend, or export it again with engine.export_onnx")


def _dims(value_info) -> List[Optional[int]]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


class _Reader:
    def __init__(self, proto):
        from onnx import numpy_helper
        self.proto = proto
        g = proto.graph
        self.consts: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.qconsts: Dict[str, QWeight] = {}
        self.alias: Dict[str, str] = {}
        self.producer: Dict[str, Layer] = {}
        self.layers: List[Layer] = []
        self.fq_src: Dict[str, Tuple[str, float]] = {}   # Q output -> (float input, scale)
        self.norm_of: Dict[str, Tuple[str, float]] = {}  # partial L2-norm pattern values
        self.shape_of: Dict[str, str] = {}
        self.quantized = False
        self.uses: Dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1

    # ---------------------------------------------------------------- helpers
    def value_name(self, name: str) -> str:
        """The value ``name`` stands for, through Identity/Flatten aliases."""
        return follow_aliases(self.alias, name)

    def const(self, name: str) -> Optional[np.ndarray]:
        return self.consts.get(name)

    def single_use(self, name: str) -> bool:
        return self.uses.get(name, 0) == 1

    def fusable(self, node, kinds=("conv",)) -> Optional[Layer]:
        """The layer producing ``node``'s first input when its output feeds only this node."""
        src = node.input[0]
        lay = self.producer.get(self.value_name(src))
        if lay is not None and lay.kind in kinds and self.single_use(src) and lay.output == self.value_name(src):
            return lay
        return None

    def rename(self, lay: Layer, node):
        old = lay.output
        del self.producer[old]
        lay.output = node.output[0]
        lay.nodes.append(node.name)
        self.producer[lay.output] = lay

    def add(self, lay: Layer):
        self.layers.append(lay)
        self.producer[lay.output] = lay
        return lay

    def weight_of(self, node, name: str):
        """(float weight, None) or (None, QWeight) for a weight input."""
        if name in self.qconsts:
            return None, self.qconsts[name]
        w = self.const(name)
        if w is None:
            raise _unsupported(node, f"weight {name!r} is not a constant initializer")
        return w.astype(np.float32), None

    def bias_of(self, node, name: str) -> Optional[np.ndarray]:
        if not name:
            return None
        b = self.const(name)
        if b is None:
            raise _unsupported(node, f"bias {name!r} is not a constant initializer")
        return b.astype(np.float32)

    @staticmethod
    def check_scale_zp(node, scale, zp, per_channel_ok: bool):
        if zp is not None:
            if zp.dtype != np.int8:
                raise _unsupported(node, f"zero point of type {zp.dtype}; only symmetric int8 "
                                   "quantisation (int8 zero point 0) is supported")
            if np.any(zp != 0):
                raise _unsupported(node, "nonzero zero point; only symmetric quantisation is "
                                   "supported (quantise with symmetric activations and weights)")
        if scale is None:
            raise _unsupported(node, "scale is not a constant")
        if scale.size != 1 and not per_channel_ok:
            raise _unsupported(node, "per-channel activation scale; activations must be "
                               "quantised per tensor")
        if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
            raise _unsupported(node, "scale must be positive and finite")

    # ---------------------------------------------------------------- ops
    def read(self):
        for node in self.proto.graph.node:
            op = node.op_type
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise _unsupported(node, "op type not supported")
            handler(node, _attrs(node))

    def op_Constant(self, node, a):
        from onnx import numpy_helper
        if "value" not in a:
            raise _unsupported(node, "only tensor constants are supported")
        self.consts[node.output[0]] = numpy_helper.to_array(a["value"])

    def op_Identity(self, node, a):
        src = node.input[0]
        if src in self.consts:
            self.consts[node.output[0]] = self.consts[src]
        elif src in self.qconsts:
            self.qconsts[node.output[0]] = self.qconsts[src]
        else:
            self.alias[node.output[0]] = self.value_name(src)

    def op_Conv(self, node, a):
        w, qw = self.weight_of(node, node.input[1])
        b = self.bias_of(node, node.input[2] if len(node.input) > 2 else "")
        if a.get("group", 1) != 1:
            raise _unsupported(node, f"grouped convolution (group={a['group']})")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _unsupported(node, f"dilated convolution (dilations={a['dilations']})")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise _unsupported(node, "auto_pad; export with explicit pads")
        shape = (w if w is not None else qw.q).shape
        if len(shape) != 4:
            raise _unsupported(node, f"{len(shape) - 2}-d convolution")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        co = shape[0]
        self.add(Layer("conv", node.name, [self.value_name(node.input[0])], node.output[0], [node.name],
                       weight=w, qweight=qw,
                       bias=b if b is not None else np.zeros(co, np.float32),
                       attrs={"kernel": (shape[2], shape[3]),
                              "stride": tuple(a.get("strides", [1, 1])),
                              "pads": tuple(pads)}))

    def op_Relu(self, node, a):
        lay = self.fusable(node, ("conv", "linear"))
        if lay is None or lay.relu:
            raise _unsupported(node, "a Relu must follow a Conv, a residual Add or a Gemm whose "
                               "output it alone reads")
        lay.relu = True
        self.rename(lay, node)

    def _scale_layer(self, lay: Layer, s: np.ndarray):
        s = s.astype(np.float32).reshape(-1)
        if lay.weight is not None:
            lay.weight = lay.weight * s.reshape((-1,) + (1,) * (lay.weight.ndim - 1))
        else:
            lay.qweight = QWeight(lay.qweight.q, (lay.qweight.scale * s).astype(np.float32))
        lay.bias = lay.bias * s

    def op_Mul(self, node, a):
        lay = self.producer.get(self.value_name(node.input[0]))
        c = self.const(node.input[1])
        if c is None:  # commuted operands
            c = self.const(node.input[0])
            lay = self.producer.get(self.value_name(node.input[1]))
            src = node.input[1]
        else:
            src = node.input[0]
        if (c is None or c.size != 1 or lay is None or lay.kind != "conv" or lay.relu
                or lay.residual or not self.single_use(src)):
            raise _unsupported(node, "a Mul is supported only by a scalar constant right after "
                               "a Conv (the residual scale), which is folded into the conv")
        self._scale_layer(lay, np.full(lay.out_channels, float(c.reshape(-1)[0])))
        self.rename(lay, node)

    def op_Add(self, node, a):
        x, y = node.input[0], node.input[1]
        # linear bias: MatMul -> Add(const)
        for src, other in ((x, y), (y, x)):
            c = self.const(other)
            lay = self.producer.get(self.value_name(src))
            if c is not None and lay is not None and lay.kind == "linear" and self.single_use(src) \
                    and not lay.relu:
                lay.bias = lay.bias + c.astype(np.float32).reshape(-1)
                self.rename(lay, node)
                return
        # residual: Conv -> Add(shortcut)
        for src, other in ((x, y), (y, x)):
            lay = self.producer.get(self.value_name(src))
            if (lay is not None and lay.kind == "conv" and not lay.relu and lay.residual is None
                    and self.single_use(src) and lay.output == self.value_name(src)
                    and self.const(other) is None):
                lay.residual = self.value_name(other)
                self.rename(lay, node)
                return
        raise _unsupported(node, "an Add is supported only as a residual (Conv output + "
                           "shortcut) or as the bias of a MatMul")

    def op_Concat(self, node, a):
        if a.get("axis") not in (1, -3):
            raise _unsupported(node, f"concat along axis {a.get('axis')}; only channels (axis 1)")
        self.add(Layer("concat", node.name, [self.value_name(i) for i in node.input], node.output[0],
                       [node.name]))

    def _pool(self, node, a, kind):
        if a.get("ceil_mode", 0):
            raise _unsupported(node, "ceil_mode=1")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _unsupported(node, "dilated pooling")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise _unsupported(node, "auto_pad; export with explicit pads")
        pads = tuple(a.get("pads", [0, 0, 0, 0]))
        if kind == "avgpool" and a.get("count_include_pad", 0) and any(pads):
            raise _unsupported(node, "count_include_pad=1 with padding; the kernels average over "
                               "the valid window (count_include_pad=False)")
        self.add(Layer(kind, node.name, [self.value_name(node.input[0])], node.output[0], [node.name],
                       attrs={"kernel": tuple(a["kernel_shape"]),
                              "stride": tuple(a.get("strides", [1, 1])), "pads": pads}))

    def op_MaxPool(self, node, a):
        if len(node.output) > 1 and node.output[1]:
            raise _unsupported(node, "MaxPool with an indices output")
        self._pool(node, a, "maxpool")

    def op_AveragePool(self, node, a):
        self._pool(node, a, "avgpool")

    def op_GlobalAveragePool(self, node, a):
        self.add(Layer("gap", node.name, [self.value_name(node.input[0])], node.output[0], [node.name]))

    def op_ReduceMean(self, node, a):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1:
            c = self.const(node.input[1])
            axes = None if c is None else list(c.reshape(-1))
        if sorted(int(x) % 4 for x in (axes or [])) != [2, 3]:
            raise _unsupported(node, "ReduceMean is supported only over H and W (global pooling)")
        lay = self.add(Layer("gap", node.name, [self.value_name(node.input[0])], node.output[0], [node.name]))
        lay.attrs["flat"] = not a.get("keepdims", 1)

    def _flatten_like(self, node):
        src = self.value_name(node.input[0])
        lay = self.producer.get(src)
        if lay is not None and lay.kind == "gap":
            self.alias[node.output[0]] = src
            lay.attrs["flat"] = True
            lay.nodes.append(node.name)
            return
        if lay is not None and lay.kind in ("linear", "l2norm"):
            self.alias[node.output[0]] = src
            return
        raise _unsupported(node, "a Flatten/Reshape is supported only after the global pool")

    def op_Flatten(self, node, a):
        if a.get("axis", 1) != 1:
            raise _unsupported(node, "Flatten with axis != 1")
        self._flatten_like(node)

    def op_Reshape(self, node, a):
        self._flatten_like(node)

    def op_Squeeze(self, node, a):
        self._flatten_like(node)

    def op_Gemm(self, node, a):
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise _unsupported(node, "Gemm with transA or alpha/beta != 1")
        w, qw = self.weight_of(node, node.input[1])
        if not a.get("transB", 0):
            if qw is not None:
                raise _unsupported(node, "quantised Gemm weight without transB")
            w = np.ascontiguousarray(w.T)
        b = self.bias_of(node, node.input[2] if len(node.input) > 2 else "")
        self._linear(node, w, qw, b)

    def op_MatMul(self, node, a):
        w, qw = self.weight_of(node, node.input[1])
        if qw is not None:
            raise _unsupported(node, "quantised MatMul weight (per-channel axis 1)")
        self._linear(node, np.ascontiguousarray(w.T), None, None)

    def _linear(self, node, w, qw, b):
        src = self.value_name(node.input[0])
        co = (w if w is not None else qw.q).shape[0]
        self.add(Layer("linear", node.name, [src], node.output[0], [node.name], weight=w,
                       qweight=qw, bias=b if b is not None else np.zeros(co, np.float32)))

    def op_BatchNormalization(self, node, a):
        lay = self.fusable(node, ("conv", "linear"))
        if lay is None or lay.relu or lay.residual:
            raise _unsupported(node, "a BatchNormalization is supported only right after a "
                               "Conv/Gemm/MatMul (folded into it)")
        gamma, beta, mean, var = (self.const(i) for i in node.input[1:5])
        if any(t is None for t in (gamma, beta, mean, var)):
            raise _unsupported(node, "BatchNormalization parameters are not constants")
        s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + a.get("epsilon", 1e-5))
        self._scale_layer(lay, s.astype(np.float32))
        lay.bias = (lay.bias + (beta - mean * s)).astype(np.float32)
        self.rename(lay, node)

    # L2 normalisation (F.normalize as exported, or LpNormalization)
    def op_LpNormalization(self, node, a):
        if a.get("p", 2) != 2 or a.get("axis", -1) not in (1, -1):
            raise _unsupported(node, "LpNormalization other than p=2 over the feature axis")
        self.add(Layer("l2norm", node.name, [self.value_name(node.input[0])], node.output[0], [node.name],
                       attrs={"eps": 0.0}))

    def op_ReduceL2(self, node, a):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1:
            c = self.const(node.input[1])
            axes = None if c is None else list(c.reshape(-1))
        if list(axes or []) not in ([1], [-1]) or not a.get("keepdims", 1):
            raise _unsupported(node, "ReduceL2 is supported only as part of L2 normalisation "
                               "over the feature axis")
        self.norm_of[node.output[0]] = (self.value_name(node.input[0]), 0.0, [node.name])

    def op_Clip(self, node, a):
        src = node.input[0]
        lo = a.get("min")
        if lo is None and len(node.input) > 1 and node.input[1]:
            c = self.const(node.input[1])
            lo = None if c is None else float(c.reshape(-1)[0])
        hi = node.input[2] if len(node.input) > 2 else ""
        if src not in self.norm_of or lo is None or hi or "max" in a:
            raise _unsupported(node, "Clip is supported only as the epsilon of L2 normalisation")
        x, _, nodes = self.norm_of[src]
        self.norm_of[node.output[0]] = (x, float(lo), nodes + [node.name])

    def op_Max(self, node, a):
        src, other = node.input[0], node.input[1]
        c = self.const(other)
        if src not in self.norm_of or c is None:
            raise _unsupported(node, "Max is supported only as the epsilon of L2 normalisation")
        x, _, nodes = self.norm_of[src]
        self.norm_of[node.output[0]] = (x, float(c.reshape(-1)[0]), nodes + [node.name])

    def op_Shape(self, node, a):
        self.shape_of[node.output[0]] = self.value_name(node.input[0])

    def op_Expand(self, node, a):
        src = node.input[0]
        if src not in self.norm_of or node.input[1] not in self.shape_of:
            raise _unsupported(node, "Expand is supported only inside L2 normalisation")
        x, eps, nodes = self.norm_of[src]
        self.norm_of[node.output[0]] = (x, eps, nodes + [node.name])

    def op_Div(self, node, a):
        x, n = self.value_name(node.input[0]), node.input[1]
        if n not in self.norm_of or self.norm_of[n][0] != x:
            raise _unsupported(node, "Div is supported only as L2 normalisation x / ||x||")
        _, eps, nodes = self.norm_of[n]
        self.add(Layer("l2norm", node.name, [x], node.output[0], nodes + [node.name],
                       attrs={"eps": eps}))

    # Q/DQ
    def op_QuantizeLinear(self, node, a):
        self.quantized = True
        scale = self.const(node.input[1])
        zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None and len(node.input) > 2 and node.input[2]:
            raise _unsupported(node, "zero point is not a constant")
        if zp is None and a.get("output_dtype", 3) != 3:  # 3 = INT8
            raise _unsupported(node, "output type other than int8")
        if zp is None:
            zp = np.zeros((), np.int8)
        src = node.input[0]
        w = self.const(src)
        self.check_scale_zp(node, scale, zp, per_channel_ok=w is not None)
        if w is not None:
            axis = a.get("axis", 1)
            s = scale.astype(np.float32).reshape(-1)
            if s.size > 1 and axis % w.ndim != 0:
                raise _unsupported(node, f"per-channel weight quantisation on axis {axis}; "
                                   "axis 0 (output channels) is supported")
            sb = s.reshape((-1,) + (1,) * (w.ndim - 1)) if s.size > 1 else s.reshape(())
            q = np.clip(np.rint(w.astype(np.float32) / sb), -128, 127).astype(np.int8)
            self.consts[node.output[0]] = q
            return
        self.fq_src[node.output[0]] = (self.value_name(src), float(scale.reshape(-1)[0]))

    def op_DequantizeLinear(self, node, a):
        self.quantized = True
        scale = self.const(node.input[1])
        zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        src = node.input[0]
        q = self.const(src)
        if q is not None:
            if q.dtype == np.int32:  # quantised bias: plain float constant
                self.consts[node.output[0]] = (q.astype(np.float64) * scale.astype(np.float64)
                                               ).astype(np.float32)
                return
            self.check_scale_zp(node, scale, zp if zp is not None else np.zeros((), np.int8),
                                per_channel_ok=True)
            if q.dtype != np.int8:
                raise _unsupported(node, f"weights of type {q.dtype}; int8 is supported")
            axis = a.get("axis", 1)
            s = scale.astype(np.float32).reshape(-1)
            if s.size > 1 and axis % q.ndim != 0:
                raise _unsupported(node, f"per-channel weight scale on axis {axis}; axis 0 "
                                   "(output channels) is supported")
            if s.size == 1:
                s = np.full(q.shape[0], s[0], np.float32)
            self.qconsts[node.output[0]] = QWeight(q, s)
            return
        if src not in self.fq_src:
            raise _unsupported(node, "DequantizeLinear of an activation must follow a "
                               "QuantizeLinear (a Q/DQ pair)")
        x, s_q = self.fq_src[src]
        self.check_scale_zp(node, scale, zp if zp is not None else np.zeros((), np.int8), False)
        s = float(scale.reshape(-1)[0])
        if not np.isclose(s, s_q, rtol=1e-6, atol=0):
            raise _unsupported(node, f"DequantizeLinear scale {s} differs from its "
                               f"QuantizeLinear scale {s_q}")
        self.add(Layer("quant", node.name, [x], node.output[0], [node.name],
                       attrs={"scale": s_q}))


def read_graph(proto) -> LayerGraph:
    """Fold and fuse an ONNX model (``onnx.ModelProto``) into a :class:`LayerGraph`."""
    g = proto.graph
    inits = {i.name for i in g.initializer}
    ins = [i for i in g.input if i.name not in inits]
    if len(ins) != 1 or len(g.output) != 1:
        raise UnsupportedGraphError(
            f"the graph has {len(ins)} inputs and {len(g.output)} outputs; the triton engine runs "
            "one image input and one output (as engine.export_onnx writes)")
    dims = _dims(ins[0])
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise UnsupportedGraphError(
            f"input {ins[0].name!r} has shape {dims}; expected N x C x H x W with fixed C, H, W "
            "(export with a fixed input size and a dynamic batch)")
    r = _Reader(proto)
    r.read()
    out = r.value_name(g.output[0].name)
    if out not in r.producer:
        raise UnsupportedGraphError(f"graph output {g.output[0].name!r} is not computed by any "
                                    "supported layer")
    names = {k: r.value_name(k) for k in r.alias}
    # keep only the layers the output depends on (drop dead ends, e.g. unused Shape chains)
    needed, live = {out}, []
    for lay in reversed(r.layers):
        if lay.output in needed:
            live.append(lay)
            needed.update(lay.inputs)
            if lay.residual:
                needed.add(lay.residual)
    live.reverse()
    return LayerGraph(live, ins[0].name, tuple(dims[1:]), out, g.output[0].name, names,
                      r.quantized)
