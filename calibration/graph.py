"""Where the Q/DQ nodes go: a plan over the FP32 graph, independent of the scales.

The placement follows the Quantization rules of ARCHITECTURE.md (what TensorRT fuses and what
OpenVINO runs fast):

- every quantized Conv reads its activation through one shared Quantize -> Dequantize pair on
  the tensor (one pair per tensor, however many convs read it) and its weights through a
  per-output-channel DequantizeLinear of an int8 initializer (axis 0);
- nothing is placed on a conv output: Conv -> Relu and Conv -> Add stay fusable;
- a residual ``Add(conv, shortcut)`` reads its shortcut quantized (the same pair the block's
  branch convs read), never the conv side;
- a Concat whose output is read only by quantized consumers reads every input quantized with
  one shared scale, the output's; a MaxPool likewise passes its input's scale through. These
  tensors form a *scale group* whose amax is the largest of its members';
- an AveragePool or GlobalAveragePool reads its input quantized when its output is quantized
  (it is requantized); a Flatten passes its input's scale through, like a MaxPool;
- Gemm (the classifier, < 0.1 % of the MACs) stays float unless ``quantize_gemm=True``; with
  it, the head (global pool, Flatten, classifier) is int8 end to end, as NNCF writes it: on
  OpenVINO a float head costs a bf16/f32 pool, a float conv output before it and a float
  classifier (``benchmarks/cpu_profile.py``).

``nonnegative`` lists the scale groups whose every member is provably >= 0 (ReLU outputs and
pools/concats of them). With ``unsigned_relu=True`` the writer quantizes those to uint8 with
zero point 0 (still symmetric about 0, twice the levels over [0, amax]); OpenVINO's CPU
plugin needs that to keep a Concat in int8 (its convolutions take unsigned activations, so a
signed Concat falls back to FP32 together with the conv that reads it). TensorRT's Q/DQ is
INT8 only, so the default stays int8 everywhere.

A passthrough op (Concat, MaxPool) with a float consumer (an excluded layer, a graph output)
keeps float inputs and is quantized at its output only, so an excluded layer really sees
float values.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from engine.export import module_path  # noqa: F401  (the exporter's node-name convention)

from .errors import AlreadyQuantizedError, CalibrationError

PASSTHROUGH = {"Concat", "MaxPool", "Flatten"}


def load_fp32(model):
    """An FP32 ONNX model (path or proto); an already quantized model is an error."""
    from engine.onnxmeta import (META_PRECISION, QUANT_OPS, is_quantized, load_onnx,
                                 metadata_props)
    proto = model if hasattr(model, "graph") else load_onnx(model)
    props = metadata_props(proto)
    where = getattr(model, "name", None) if hasattr(model, "graph") else str(model)
    if is_quantized(proto):
        qnodes = [n for n in proto.graph.node if n.op_type in QUANT_OPS]
        raise AlreadyQuantizedError(
            f"{where or 'the model'} is already quantized: it holds {len(qnodes)} quantization "
            f"nodes (first: {qnodes[0].op_type} {qnodes[0].name!r}); calibrate the FP32 export "
            "instead (inception-engine export ...)")
    if props.get(META_PRECISION, "fp32") not in ("fp32", "float32"):
        raise AlreadyQuantizedError(
            f"{where or 'the model'} has precision {props[META_PRECISION]!r} in its metadata; "
            "calibrate the FP32 export")
    return proto


@dataclass
class Layer:
    """A weighted op (Conv, or Gemm with ``quantize_gemm``) the plan quantizes."""

    node: str                 # ONNX node name
    module: str               # PyTorch module path
    op_type: str
    input: str                # activation tensor
    weight: str               # weight initializer
    axis: int = 0             # output-channel axis of the weight


@dataclass
class QuantPlan:
    """Which tensors get a Q/DQ pair, who reads the quantized version, and the scale groups."""

    layers: List[Layer] = field(default_factory=list)
    tensors: List[str] = field(default_factory=list)                 # activation Q/DQ sites
    readers: Dict[str, List[Tuple[str, int]]] = field(default_factory=dict)  # tensor -> (node, idx)
    groups: Dict[str, str] = field(default_factory=dict)             # tensor -> group root
    excluded: List[str] = field(default_factory=list)                # node names kept float
    shortcut_of: Dict[str, str] = field(default_factory=dict)        # Add node -> conv node
    nonnegative: Set[str] = field(default_factory=set)               # tensors whose group is >= 0

    def activation_tensors(self) -> List[str]:
        return list(self.tensors)

    def group_members(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for t in self.tensors:
            out.setdefault(self.groups.get(t, t), []).append(t)
        return out

    def group_amax(self, amax: Dict[str, float]) -> Dict[str, float]:
        """Per-tensor amax with every scale group set to its members' largest."""
        out = {}
        for members in self.group_members().values():
            a = max(amax[m] for m in members)
            for m in members:
                out[m] = a
        return out


class _UnionFind:
    def __init__(self):
        self.parent: Dict[str, str] = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def layer_names(proto) -> Dict[str, List[str]]:
    """Every name ``exclude`` accepts -> the node names it covers.

    Node names (``/conv2d_1a/conv/Conv``) and module paths with all their prefixes
    (``conv2d_1a.conv``, ``conv2d_1a``, ``repeat.0``, ``repeat``).
    """
    names: Dict[str, List[str]] = {}
    for n in proto.graph.node:
        if not n.name:
            continue
        names.setdefault(n.name, []).append(n.name)
        path = module_path(n.name)
        if path:
            parts = path.split(".")
            for k in range(1, len(parts) + 1):
                names.setdefault(".".join(parts[:k]), []).append(n.name)
    return names


def resolve_exclude(proto, exclude: Iterable[str]) -> Set[str]:
    """Node names covered by ``exclude``; an unknown name is an error listing close matches."""
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    if not exclude:
        return set()
    index = layer_names(proto)
    nodes: Set[str] = set()
    for name in exclude:
        key = name.strip()
        if key not in index and key.rstrip("/") in index:
            key = key.rstrip("/")
        if key not in index:
            close = difflib.get_close_matches(key, list(index), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                "; names are ONNX node names (/conv2d_1a/conv/Conv) or module paths (conv2d_1a.conv, repeat.0)"
            raise CalibrationError(f"exclude: no layer named {name!r} in the model{hint}")
        nodes.update(index[key])
    return nodes


def plan_quantization(proto, exclude: Iterable[str] = (), quantize_gemm: bool = False,
                      excluded_nodes: Optional[Set[str]] = None) -> QuantPlan:
    """The Q/DQ placement for ``proto`` (see the module docstring)."""
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    skip = set(excluded_nodes or ()) | resolve_exclude(proto, exclude)
    producer = {o: n for n in g.node for o in n.output}
    consumers: Dict[str, List[Tuple[object, int]]] = {}
    for n in g.node:
        for k, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, k))
    graph_outputs = {o.name for o in g.output}

    plan = QuantPlan(excluded=sorted(skip))
    readers: Dict[str, List[Tuple[str, int]]] = {}

    def read_quantized(node, idx):
        readers.setdefault(node.input[idx], []).append((node.name, idx))

    def fully_quantized(t):
        """Every reader of ``t`` reads it quantized (so a passthrough op may go int8)."""
        if t in graph_outputs or t not in readers:
            return False
        quantized = {r for r in readers[t]}
        return all((n.name, k) in quantized for n, k in consumers.get(t, []))

    uf = _UnionFind()
    quant_convs = set()
    # walk backwards so each node knows how its output is read before deciding its inputs
    for n in reversed(list(g.node)):
        if n.name in skip:
            continue
        op = n.op_type
        if op == "Conv" or (op == "Gemm" and quantize_gemm):
            if len(n.input) < 2 or n.input[1] not in inits:
                continue                       # weights computed at run time: leave float
            axis = 0
            if op == "Gemm":
                trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            plan.layers.append(Layer(n.name, module_path(n.name), op, n.input[0], n.input[1], axis))
            quant_convs.add(n.name)
            read_quantized(n, 0)
        elif op == "Add" and len(n.input) == 2:
            prods = [producer.get(t) for t in n.input]
            conv_side = [k for k, p in enumerate(prods) if p is not None and p.op_type == "Conv"]
            if len(conv_side) == 1:
                conv = prods[conv_side[0]]
                if conv.name not in skip and conv.input[1] in inits:
                    read_quantized(n, 1 - conv_side[0])
                    plan.shortcut_of[n.name] = conv.name
        elif op in PASSTHROUGH and fully_quantized(n.output[0]):
            for k in range(len(n.input)):
                read_quantized(n, k)
                uf.union(n.output[0], n.input[k])
        elif op in ("AveragePool", "GlobalAveragePool") and n.output[0] in readers:
            read_quantized(n, 0)
    plan.layers.reverse()
    order = {}
    for i, n in enumerate(g.node):          # tensors in graph order: input first
        for t in list(n.input) + list(n.output):
            order.setdefault(t, i)
    plan.tensors = sorted(readers, key=lambda t: order.get(t, -1))
    plan.readers = {t: readers[t] for t in plan.tensors}
    plan.groups = {t: uf.find(t) for t in plan.tensors}
    plan.nonnegative = _nonnegative_groups(plan, producer)
    for t in plan.tensors:
        if t in inits:
            raise CalibrationError(f"tensor {t!r} read as an activation is an initializer; "
                                   "the graph is not an exported Inception model")
    return plan


def _nonnegative(tensor, producer, depth=0) -> bool:
    """Whether ``tensor`` is provably >= 0: a ReLU output, or a pool/concat of such."""
    n = producer.get(tensor)
    if n is None or depth > 64:
        return False
    if n.op_type == "Relu":
        return True
    if n.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool", "Flatten"):
        return _nonnegative(n.input[0], producer, depth + 1)
    if n.op_type == "Concat":
        return all(_nonnegative(i, producer, depth + 1) for i in n.input)
    return False


def _nonnegative_groups(plan: QuantPlan, producer) -> Set[str]:
    """The plan's tensors whose whole scale group is >= 0 (uint8 candidates)."""
    out: Set[str] = set()
    for members in plan.group_members().values():
        if all(_nonnegative(t, producer) for t in members):
            out.update(members)
    return out
