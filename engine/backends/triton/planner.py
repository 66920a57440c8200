"""Layer list -> execution plan: storage and precision per value, in-place concats, merged
1x1 heads, in-place residuals, one arena of buffers, and the printable plan.

Values and storage
------------------
Every value (a layer output) lives in a *home*: a channel slice ``[off, off + C)`` of an NHWC
buffer ``[N, H, W, C_buf]``. Its storage is float (the plan's float dtype) or int8 with one
per-tensor scale (Q/DQ graphs). A ``quant`` layer (a Q/DQ pair) costs nothing when its input
can be *written* quantised: the producer's epilogue requantises (int8 conv, average pool, the
input step), max pool keeps its input's scale, and a concat whose consumers all quantise with
one scale is stored int8 and passes that scale to its inputs (``Q(concat(a, b)) =
concat(Q(a), Q(b))``). Anything else becomes an explicit quantize/dequantize step.

In-place concats: a concat has no step. Its output gets a buffer (or a slice of an outer
concat's buffer) and each input that nothing else pins down is written straight into its
channel slice by its producer; an input that cannot be (a graph input, one read by two
concats, a storage mismatch) is copied in by a convert step, counted in the plan's stats.

Merged heads: 1x1 stride-1 convs without residual that read the same value, with the same
ReLU flag, weight kind and destination dtype/scale run as one GEMM whose output columns go
to each head's home (up to ``MAX_HEADS`` per launch, the kernel's destination limit).

Residuals: ``relu(shortcut + conv(y))`` is the conv's epilogue; when the conv is the last
reader of the shortcut and both are whole buffers of one shape and dtype, the output
overwrites the shortcut in place (the trunk of an Inception-ResNet stage is one buffer).

Arena: buffers get byte offsets in one arena per batch size from their lifetimes (greedy by
size, first fit), computed per image and scaled by the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


from ...errors import UnsupportedGraphError
from .graph import Layer, LayerGraph

MAX_HEADS = 3          # destinations one conv launch can write (kernels.conv.MAX_DESTINATIONS)
ALIGN = 256            # bytes; per-image buffer sizes are rounded up to this
FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


@dataclass
class Value:
    name: str
    channels: int
    h: int
    w: int
    flat: bool = False                 # [N, C] (after the global pool)
    scale: Optional[float] = None      # int8 storage with this scale; None: float storage
    buf: int = -1
    offset: int = 0                    # channel offset in the buffer
    names: List[str] = field(default_factory=list)  # ONNX tensor names it stands for


@dataclass
class Buffer:
    id: int
    channels: int
    h: int
    w: int
    dtype: str
    first: int = 0
    last: int = 0
    offset: int = 0                    # bytes per image into the arena

    @property
    def nbytes(self) -> int:           # per image, aligned
        n = self.h * self.w * self.channels * _ITEMSIZE[self.dtype]
        return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Step:
    """One launch. op: input | conv | maxpool | avgpool | gap | linear | l2norm | quantize |
    dequantize | copy | output."""

    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    layers: List[Layer] = field(default_factory=list)
    residual: Optional[str] = None
    in_place: bool = False
    int8: bool = False                 # int8 GEMM (int8 input and weights)
    why: str = ""                      # for convert steps: what made them necessary
    fused: List[str] = field(default_factory=list)


@dataclass
class Plan:
    steps: List[Step]
    values: Dict[str, Value]
    buffers: List[Buffer]
    input: str
    output: str
    output_name: str
    input_shape: Tuple[int, int, int]
    precision: str
    float_dtype: str
    arena_bytes: int                   # per image
    stats: Dict[str, int]
    layer_graph: LayerGraph

    names: Dict[str, str] = field(default_factory=dict)   # ONNX tensor name -> value name

    def value_of(self, onnx_name: str) -> Optional[Value]:
        return self.values.get(self.names.get(onnx_name, onnx_name))

    def ready(self) -> Dict[str, int]:
        """Value -> index of the step after which it is complete (a concat: its last input,
        before anything overwrites its buffer, e.g. an in-place residual)."""
        r: Dict[str, int] = {}
        for i, st in enumerate(self.steps):
            for o in st.outputs:
                r[o] = i
        stepped = dict(r)
        vals = self.values

        def overlap(a: Value, b: Value) -> bool:
            return a.buf == b.buf and a.offset < b.offset + b.channels and \
                b.offset < a.offset + a.channels

        def contains(a: Value, b: Value) -> bool:
            return a.buf == b.buf and a.offset <= b.offset and \
                b.offset + b.channels <= a.offset + a.channels

        for name, v in vals.items():
            if name in r or v.buf < 0:
                continue
            first_read = min((i for i, st in enumerate(self.steps)
                              for x in st.inputs + ([st.residual] if st.residual else [])
                              if contains(vals[x], v)), default=len(self.steps))
            ks = [k for o, k in stepped.items() if overlap(vals[o], v) and k < first_read]
            r[name] = max(ks) if ks else 0
        return r

    def tensor_names(self) -> List[str]:
        """ONNX tensor names the plan can show (for ``intermediates``), in execution order."""
        ready = self.ready()
        order = sorted((k, n) for n, k in ready.items())
        return [t for _, n in order for t in self.values[n].names]


def _unsupported(lay: Layer, why: str):
    return UnsupportedGraphError(
        f"node {lay.name!r} ({lay.kind}): {why}; the triton kernels do not run it (run this file "
        "on the onnxruntime backend)")


def _shapes(lg: LayerGraph) -> Dict[str, Value]:
    c, h, w = lg.input_shape
    vals = {lg.input: Value(lg.input, c, h, w)}
    for lay in lg.layers:
        src = [vals[i] for i in lay.inputs]
        x = src[0]
        if lay.kind == "conv":
            co, ci, kh, kw = (lay.weight if lay.weight is not None else lay.qweight.q).shape
            if ci != x.channels:
                raise _unsupported(lay, f"weight expects {ci} input channels, input has {x.channels}")
            pt, pl, pb, pr = lay.attrs["pads"]
            if (pt, pl) != (pb, pr):
                raise _unsupported(lay, f"asymmetric padding {lay.attrs['pads']}")
            sh, sw = lay.attrs["stride"]
            v = Value(lay.output, co, (x.h + 2 * pt - kh) // sh + 1, (x.w + 2 * pl - kw) // sw + 1)
        elif lay.kind in ("maxpool", "avgpool"):
            want = ((3, 3), (2, 2), (0, 0, 0, 0)) if lay.kind == "maxpool" else \
                ((3, 3), (1, 1), (1, 1, 1, 1))
            got = (lay.attrs["kernel"], lay.attrs["stride"], lay.attrs["pads"])
            if got != want:
                what = "3x3 stride 2 VALID" if lay.kind == "maxpool" else \
                    "3x3 stride 1 pad 1 (count_include_pad=False)"
                raise _unsupported(lay, f"kernel/stride/pads {got}; the pool kernels run {what}")
            if lay.kind == "maxpool":
                v = Value(lay.output, x.channels, (x.h - 3) // 2 + 1, (x.w - 3) // 2 + 1)
            else:
                v = Value(lay.output, x.channels, x.h, x.w)
        elif lay.kind == "concat":
            if any((s.h, s.w, s.flat) != (x.h, x.w, x.flat) for s in src):
                raise _unsupported(lay, "inputs of different spatial sizes")
            v = Value(lay.output, sum(s.channels for s in src), x.h, x.w, x.flat)
        elif lay.kind == "gap":
            v = Value(lay.output, x.channels, 1, 1, flat=True)
            if not lay.attrs.get("flat"):
                raise _unsupported(lay, "a global pool not followed by Flatten (the linear "
                                   "head expects [N, C])")
        elif lay.kind == "linear":
            if not x.flat:
                raise _unsupported(lay, "a Gemm/MatMul on a 4-D tensor")
            co, ci = (lay.weight if lay.weight is not None else lay.qweight.q).shape
            if ci != x.channels:
                raise _unsupported(lay, f"weight expects {ci} features, input has {x.channels}")
            v = Value(lay.output, co, 1, 1, flat=True)
        elif lay.kind in ("l2norm", "quant"):
            v = Value(lay.output, x.channels, x.h, x.w, x.flat)
        else:  # pragma: no cover - graph.py produces only the kinds above
            raise _unsupported(lay, "unknown layer kind")
        if lay.residual is not None:
            r = vals[lay.residual]
            if (r.channels, r.h, r.w) != (v.channels, v.h, v.w):
                raise _unsupported(lay, f"residual shape {r.channels}x{r.h}x{r.w} differs from "
                                   f"the conv output {v.channels}x{v.h}x{v.w}")
        vals[lay.output] = v
    return vals


def _common_quant_scale(readers: List[Layer]) -> Optional[float]:
    """The scale every reader quantises with, when all of them are Q/DQ pairs of one scale;
    else ``None``."""
    scales = {c.attrs["scale"] for c in readers if c.kind == "quant"}
    if readers and all(c.kind == "quant" for c in readers) and len(scales) == 1:
        return scales.pop()
    return None


class _Planner:
    def __init__(self, lg: LayerGraph, precision: str, float_dtype: str):
        self.lg = lg
        self.precision = precision
        self.fdt = float_dtype
        self.vals = _shapes(lg)
        self.alias: Dict[str, str] = {}
        self.layers: List[Layer] = list(lg.layers)
        self.prod: Dict[str, Layer] = {l.output: l for l in self.layers}
        self.steps: List[Step] = []
        self.stats: Dict[str, int] = {}

    def value_name(self, name: str) -> str:
        """The value ``name`` stands for, after the aliases of merged Q/DQ pairs."""
        while name in self.alias:
            name = self.alias[name]
        return name

    def consumers(self) -> Dict[str, List[Layer]]:
        out: Dict[str, List[Layer]] = {}
        for lay in self.layers:
            for i in lay.inputs + ([lay.residual] if lay.residual else []):
                out.setdefault(self.value_name(i), []).append(lay)
        return out

    def canon(self):
        for lay in self.layers:
            lay.inputs = [self.value_name(i) for i in lay.inputs]
            if lay.residual:
                lay.residual = self.value_name(lay.residual)

    # ------------------------------------------------------------ storage (Q/DQ)
    def resolve_storage(self):
        """Decide every value's storage: float, or int8 with one scale (Q/DQ graphs)."""
        self.merge_identical_quants()
        self.storage_where_produced()
        # the graph input: quantised by the input step when every reader quantises it alike
        scale = _common_quant_scale(self.consumers().get(self.lg.input, []))
        if scale is not None:
            self.vals[self.lg.input].scale = scale
        self.drop_identity_quants()
        self.storage_from_concats()

    def merge_identical_quants(self):
        """Identical Q/DQ pairs on one tensor are one value."""
        seen: Dict[Tuple[str, float], str] = {}
        keep = []
        for lay in self.layers:
            if lay.kind == "quant":
                key = (self.value_name(lay.inputs[0]), lay.attrs["scale"])
                if key in seen:
                    self.alias[lay.output] = seen[key]
                    continue
                seen[key] = lay.output
            keep.append(lay)
        self.layers = keep
        self.canon()

    def storage_where_produced(self):
        """Forward: each value's storage, decided where it is produced (a quant layer whose
        input already has its scale disappears)."""
        cons = self.consumers()
        keep = []
        for lay in self.layers:
            out = self.vals[lay.output]
            if lay.kind == "quant":
                x = self.vals[self.value_name(lay.inputs[0])]
                if x.scale == lay.attrs["scale"]:
                    self.alias[lay.output] = x.name       # already stored with this scale
                    continue
                out.scale = lay.attrs["scale"]
                keep.append(lay)
                continue
            keep.append(lay)
            if lay.kind == "maxpool":
                out.scale = self.vals[self.value_name(lay.inputs[0])].scale  # max keeps the int8 grid
            elif lay.kind == "concat":
                sc = {self.vals[self.value_name(i)].scale for i in lay.inputs}
                if len(sc) == 1 and None not in sc:
                    out.scale = sc.pop()                      # exact: all inputs on one grid
            if out.scale is None and lay.output != self.lg.output and self.can_emit_int8(lay):
                out.scale = _common_quant_scale(cons.get(lay.output, []))
        self.layers = keep
        self.canon()

    def drop_identity_quants(self):
        """Quant layers whose input now carries their scale are identities."""
        keep = []
        for lay in self.layers:
            if lay.kind == "quant" and self.vals[self.value_name(lay.inputs[0])].scale == lay.attrs["scale"]:
                self.alias[lay.output] = self.value_name(lay.inputs[0])
                continue
            keep.append(lay)
        self.layers = keep
        self.canon()

    def storage_from_concats(self):
        """Backward over concats: pass the concat's storage to inputs only it reads."""
        cons = self.consumers()
        for lay in reversed(self.layers):
            if lay.kind != "concat":
                continue
            target = self.vals[lay.output].scale
            for i in lay.inputs:
                v = self.vals[i]
                p = self.prod.get(i)
                if v.scale == target or p is None or len(cons.get(i, [])) != 1 \
                        or lay.inputs.count(i) != 1:
                    continue
                if target is None and v.scale is not None:
                    continue          # fake-quantised values must keep their grid: convert
                if target is not None and v.scale is None and self.can_emit_int8(p, target):
                    v.scale = target

    def int8_gemm(self, lay: Layer) -> bool:
        return (lay.kind in ("conv", "linear") and lay.qweight is not None
                and self.vals[self.value_name(lay.inputs[0])].scale is not None)

    def can_emit_int8(self, lay: Layer, scale: Optional[float] = None) -> bool:
        if lay.kind == "conv":
            return self.int8_gemm(lay)
        if lay.kind == "avgpool":
            return True
        if lay.kind == "maxpool":
            s = self.vals[self.value_name(lay.inputs[0])].scale
            return s is not None and (scale is None or s == scale)
        if lay.kind == "concat":
            return True
        return False

    # ------------------------------------------------------------ steps
    def convert(self, src: str, scale: Optional[float], why: str, dst: Optional[str] = None) -> str:
        """A value equal to ``src`` stored with ``scale``; adds the convert step."""
        v = self.vals[src]
        name = dst or f"{src}@{'q' if scale is not None else 'f'}"
        if name in self.vals and dst is None:
            return name
        self.vals[name] = Value(name, v.channels, v.h, v.w, v.flat, scale)
        if scale is not None:
            op = "quantize"
        else:
            op = "dequantize" if v.scale is not None else "copy"
        self.steps.append(Step(op, f"{op} {src}", [src], [name], why=why))
        return name

    def build_steps(self):
        lg = self.lg
        self.steps.append(Step("input", "input", [], [lg.input]))
        self.vals[lg.input].names.append(lg.input)
        self.concat_slots: Dict[str, Tuple[str, int]] = {}  # value -> (concat output, offset)
        for lay in self.layers:
            self.vals[lay.output].names.append(lay.output)
            if lay.kind == "concat":
                continue
            x = lay.inputs[0]
            xv = self.vals[x]
            if lay.kind == "conv" or lay.kind == "linear":
                int8 = self.int8_gemm(lay)
                if not int8 and xv.scale is not None:
                    x = self.convert(x, None, f"{lay.name} has float weights")
                st = Step(lay.kind, lay.name, [x], [lay.output], [lay], residual=lay.residual,
                          int8=int8, fused=list(lay.nodes[1:]))
                if self.vals[lay.output].scale is not None and not int8:
                    raise AssertionError("float conv cannot write int8")  # can_emit prevents it
                self.steps.append(st)
            elif lay.kind in ("maxpool", "avgpool", "gap"):
                self.steps.append(Step(lay.kind, lay.name, [x], [lay.output], [lay],
                                       fused=list(lay.nodes[1:])))
                if lay.kind == "maxpool" and self.vals[lay.output].scale != xv.scale:
                    raise AssertionError("max pool changes scale")
            elif lay.kind == "l2norm":
                if xv.scale is not None:
                    x = self.convert(x, None, "l2 normalisation runs in float")
                self.steps.append(Step("l2norm", lay.name, [x], [lay.output], [lay],
                                       fused=list(lay.nodes[1:])))
            elif lay.kind == "quant":
                self.steps.append(Step("quantize", lay.name, [x], [lay.output], [lay],
                                       why="Q/DQ on a value no producer can write as int8"))
        out = self.value_name(lg.output)
        if self.vals[out].scale is not None:
            out = self.convert(out, None, "the output is float")
        self.output = out
        self.steps.append(Step("output", "output", [out], []))

    def place_concats(self):
        """Give each concat a buffer and write its inputs into their slices (outer first)."""
        home: Dict[str, Tuple[str, int]] = {}     # value -> (root value, channel offset)
        concats = [l for l in self.layers if l.kind == "concat"]
        concat_of = {l.output: l for l in concats}

        def ready(v: str) -> int:                # index of the step after which v is complete
            if v in concat_of:
                return max(ready(i) for i in concat_of[v].inputs)
            return next(k for k, st in enumerate(self.steps) if v in st.outputs)

        n_in = n_copy = n_whole = 0
        for lay in reversed(concats):
            root, base = home.get(lay.output, (lay.output, 0))
            target = self.vals[lay.output].scale
            off, copies = 0, 0
            for i in lay.inputs:
                n_in += 1
                v = self.vals[i]
                twice = i in home
                ok = (not twice and i != self.lg.input and v.scale == target
                      and (i in concat_of or self.prod.get(i) is not None))
                if ok:
                    home[i] = (root, base + off)
                else:
                    why = ("the graph input" if i == self.lg.input else
                           "read by two concats" if twice else
                           f"stored {'int8' if v.scale is not None else 'float'}, the concat "
                           f"{'int8' if target is not None else 'float'}"
                           + (" (another scale)" if v.scale is not None and target is not None
                              else ""))
                    name = f"{i}@{lay.output}@{off}"
                    pos = max(ready(j) for j in lay.inputs)
                    tail = self.steps[pos + 1:]
                    del self.steps[pos + 1:]
                    self.convert(i, target, f"concat input copy: {why}", dst=name)
                    self.steps.extend(tail)
                    home[name] = (root, base + off)
                    copies += 1
                off += v.channels
            n_copy += copies
            n_whole += copies == 0
        self.stats["concats"] = len(concats)
        self.stats["concat_inputs"] = n_in
        self.stats["concat_copies"] = n_copy
        self.stats["concats_in_place"] = n_whole
        self.home = home

    def merge_heads(self):
        groups: Dict[tuple, List[Step]] = {}
        order = []
        for st in self.steps:
            if st.op != "conv" or st.residual is not None:
                continue
            lay = st.layers[0]
            if lay.attrs["kernel"] != (1, 1) or lay.attrs["stride"] != (1, 1) or any(lay.attrs["pads"]):
                continue
            # int8 heads with different output scales still merge: the launch requantises
            # with the first head's scale and ops.prepare folds each head's ratio into its
            # columns' epilogue scale and bias (relu and rounding commute with it)
            key = (st.inputs[0], lay.relu, st.int8, self.vals[st.outputs[0]].scale is not None)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(st)
        n_groups = n_heads = 0
        for key in order:
            members = groups[key]
            for k in range(0, len(members), MAX_HEADS):
                chunk = members[k:k + MAX_HEADS]
                if len(chunk) < 2:
                    continue
                first = chunk[0]
                first.layers = [s.layers[0] for s in chunk]
                first.outputs = [s.outputs[0] for s in chunk]
                first.fused = [n for s in chunk for n in s.layers[0].nodes[1:]]
                first.name = " + ".join(s.name for s in chunk)
                for s in chunk[1:]:
                    self.steps.remove(s)
                n_groups += 1
                n_heads += len(chunk)
        self.stats["merged_groups"] = n_groups
        self.stats["merged_heads"] = n_heads

    def allocate(self):
        """Buffers for the values, in-place residuals, then byte offsets in one arena."""
        self.assign_buffers()
        self.residuals_in_place()
        self.drop_unused_buffers()
        self.pack_arena()

    def assign_buffers(self):
        """One buffer per root (a value not in a concat slice); slices point into their root's."""
        bufs: List[Buffer] = []
        buf_of: Dict[str, int] = {}

        def new_buf(v: Value) -> int:
            dt = "int8" if v.scale is not None else FLOAT_DTYPES[self.fdt]
            bufs.append(Buffer(len(bufs), v.channels, v.h, v.w, dt))
            return len(bufs) - 1

        for st in self.steps:
            for o in st.outputs:
                if o in self.home:
                    continue
                buf_of[o] = new_buf(self.vals[o])
        for lay in self.layers:    # concat roots
            if lay.kind == "concat" and lay.output not in self.home:
                buf_of[lay.output] = new_buf(self.vals[lay.output])
        for name, (root, off) in self.home.items():
            v = self.vals[name]
            v.buf, v.offset = buf_of[root], off
        for name, b in buf_of.items():
            self.vals[name].buf, self.vals[name].offset = b, 0
        # concats' values point at their root buffer too
        for lay in self.layers:
            if lay.kind == "concat":
                v = self.vals[lay.output]
                root, off = self.home.get(lay.output, (lay.output, 0))
                v.buf, v.offset = buf_of[root], off
        self.bufs = bufs
        self.lifetimes()

    def residuals_in_place(self):
        """A residual conv that is the last reader of its shortcut overwrites it, when both
        are whole buffers of one shape and dtype."""
        def whole(v: Value, b: Buffer) -> bool:
            return v.offset == 0 and v.channels == b.channels

        n_inplace = 0
        for idx, st in enumerate(self.steps):
            if st.op != "conv" or st.residual is None:
                continue
            r, o = self.vals[st.residual], self.vals[st.outputs[0]]
            rb, ob = self.bufs[r.buf], self.bufs[o.buf]
            if (rb.last == idx and whole(r, rb) and whole(o, ob) and rb.dtype == ob.dtype
                    and (rb.h, rb.w) == (ob.h, ob.w) and st.residual != self.lg.input
                    and sum(1 for v in self.vals.values() if v.buf == o.buf) == 1):
                o.buf = r.buf
                st.in_place = True
                n_inplace += 1
                self.lifetimes()
        self.stats["residuals"] = sum(1 for s in self.steps if s.op == "conv" and s.residual)
        self.stats["residuals_in_place"] = n_inplace

    def drop_unused_buffers(self):
        """Remove buffers no value lives in any more (taken over in place) and renumber."""
        used = sorted({v.buf for v in self.vals.values() if v.buf >= 0})
        remap = {b: i for i, b in enumerate(used)}
        self.bufs = [self.bufs[b] for b in used]
        for i, b in enumerate(self.bufs):
            b.id = i
        for v in self.vals.values():
            if v.buf >= 0:
                v.buf = remap[v.buf]
        self.lifetimes()

    def pack_arena(self):
        """Byte offsets per image: first fit, biggest first. Two buffers share bytes only
        when every step touching one is a dependency-ancestor of every step touching the
        other, so the reuse never orders steps that could run on parallel streams."""
        deps = _dependencies(self.steps, self.vals, self.bufs, arena=False)
        ancestors = _ancestor_bits(deps)
        touch = [0] * len(self.bufs)               # per buffer: the steps that access it
        for idx, st in enumerate(self.steps):
            for name in st.inputs + st.outputs + ([st.residual] if st.residual else []):
                touch[self.vals[name].buf] |= 1 << idx
        before_all = []                            # per buffer: ancestors of all its steps
        for t in touch:
            common, k = -1, 0
            while t >> k:
                if t >> k & 1:
                    common &= ancestors[k]
                k += 1
            before_all.append(common)

        def ordered(a: Buffer, b: Buffer) -> bool:
            return touch[a.id] & ~before_all[b.id] == 0 or touch[b.id] & ~before_all[a.id] == 0

        placed: List[Buffer] = []
        for b in sorted(self.bufs, key=lambda b: (-b.nbytes, b.first)):
            off = 0
            for p in sorted((p for p in placed if not ordered(p, b)), key=lambda p: p.offset):
                if off + b.nbytes <= p.offset:
                    break
                off = max(off, p.offset + p.nbytes)
            b.offset = off
            placed.append(b)
        self.arena = max((b.offset + b.nbytes for b in self.bufs), default=0)
        self.stats["buffers"] = len(self.bufs)
        self.stats["arena_bytes_per_image"] = self.arena
        self.stats["naive_bytes_per_image"] = sum(b.nbytes for b in self.bufs)

    def lifetimes(self):
        for b in self.bufs:
            b.first, b.last = 10 ** 9, -1
        n = len(self.steps)
        for idx, st in enumerate(self.steps):
            for o in st.outputs:
                b = self.bufs[self.vals[o].buf]
                b.first = min(b.first, idx)
                b.last = max(b.last, idx)
            for i in st.inputs + ([st.residual] if st.residual else []):
                b = self.bufs[self.vals[i].buf]
                b.last = max(b.last, idx)
                b.first = min(b.first, idx)
        self.bufs[self.vals[self.output].buf].last = n
        for b in self.bufs:
            if b.last < 0:
                b.first = b.last = 0


def build_plan(lg: LayerGraph, precision: str, float_dtype: Optional[str] = None) -> Plan:
    """Plan ``lg`` at ``precision`` (fp32 | fp16 | bf16 | int8).

    float_dtype: storage of float values; the precision itself for fp32/fp16/bf16, fp32 by
    default for int8 plans (only the few values outside the Q/DQ regions are float).
    """
    if precision == "int8" and not lg.quantized:
        raise UnsupportedGraphError("precision int8 needs a Q/DQ ONNX written by calibration "
                                    "(calibration.quantize); this graph has no Q/DQ nodes")
    if precision != "int8" and lg.quantized:
        raise UnsupportedGraphError(f"this graph holds Q/DQ nodes; it runs as int8, not {precision}")
    fdt = float_dtype or (precision if precision != "int8" else "fp32")
    if fdt not in FLOAT_DTYPES:
        raise ValueError(f"float dtype {fdt!r}; valid: {', '.join(FLOAT_DTYPES)}")
    p = _Planner(lg, precision, fdt)
    p.resolve_storage()
    p.build_steps()
    p.place_concats()
    p.merge_heads()
    p.allocate()
    names = dict(lg.names)
    for k in list(p.alias):
        names[k] = p.value_name(k)
    for k, v in list(names.items()):
        names[k] = p.value_name(v)
    for k, v in names.items():
        if v in p.vals and k not in p.vals[v].names:
            p.vals[v].names.append(k)
    names.update({n: v.name for v in p.vals.values() for n in v.names})
    n_conv_nodes = sum(1 for l in lg.layers if l.kind == "conv")
    p.stats.update({
        "conv_layers": n_conv_nodes,
        "conv_launches": sum(1 for s in p.steps if s.op == "conv"),
        "relu_fused": sum(1 for l in lg.layers if l.relu),
        "int8_gemms": sum(len(s.layers) for s in p.steps if s.int8),
        "convert_steps": sum(1 for s in p.steps if s.op in ("quantize", "dequantize", "copy")),
        "steps": sum(1 for s in p.steps if s.op not in ("input", "output")),
    })
    return Plan(p.steps, p.vals, p.bufs, lg.input, p.output, lg.output_name, lg.input_shape,
                precision, fdt, p.arena, p.stats, lg, names)


# ---------------------------------------------------------------------------- streams
MAX_STREAMS = 4        # an Inception block has at most four parallel branches


@dataclass
class Schedule:
    """Which CUDA stream runs each step, and the event joins between streams.

    ``stream[i]``: the stream of step ``i`` (0 is the caller's stream). ``waits[i]``: the
    steps whose completion step ``i`` waits for on another stream (an event recorded after
    each). ``deps[i]``: every step that must finish before step ``i`` (the dependency DAG,
    from the values it reads and the arena bytes it reads and writes).
    """

    stream: List[int]
    waits: List[List[int]]
    deps: List[List[int]]

    @property
    def n_streams(self) -> int:
        return max(self.stream, default=0) + 1

    @property
    def recorded(self) -> List[int]:
        """The steps after which an event is recorded (someone waits for them)."""
        return sorted({j for w in self.waits for j in w})


def _accesses(vals: Dict[str, Value], st: Step):
    """``(reads, writes)`` of a step as (buffer, first channel, last channel + 1)."""
    def span(name):
        v = vals[name]
        return (v.buf, v.offset, v.offset + v.channels)
    reads = [span(i) for i in st.inputs + ([st.residual] if st.residual else [])]
    return reads, [span(o) for o in st.outputs]


def _dependencies(steps: List[Step], vals: Dict[str, Value], bufs: List[Buffer],
                  arena: bool) -> List[List[int]]:
    """For each step, the earlier steps it must follow: it reads what they wrote, or writes
    what they read or wrote. Two accesses conflict on one buffer when their channels
    overlap; with ``arena``, also on two buffers whose arena bytes overlap."""
    def conflict(a, b) -> bool:
        if a[0] == b[0]:
            return a[1] < b[2] and b[1] < a[2]
        if not arena:
            return False
        ba, bb = bufs[a[0]], bufs[b[0]]
        return ba.offset < bb.offset + bb.nbytes and bb.offset < ba.offset + ba.nbytes

    acc = [_accesses(vals, st) for st in steps]
    deps: List[List[int]] = []
    for j, (rj, wj) in enumerate(acc):
        mine = []
        for i in range(j):
            ri, wi = acc[i]
            if any(conflict(w, r) for w in wi for r in rj) or \
                    any(conflict(w, x) for w in wj for x in ri + wi):
                mine.append(i)
        deps.append(mine)
    return deps


def _ancestor_bits(deps: List[List[int]]) -> List[int]:
    """Per step, the bit set of every step it transitively depends on."""
    ancestors: List[int] = []
    for d in deps:
        bits = 0
        for i in d:
            bits |= ancestors[i] | (1 << i)
        ancestors.append(bits)
    return ancestors


def step_dependencies(plan: Plan) -> List[List[int]]:
    """The dependency DAG of a plan's steps, through values and the arena's shared bytes."""
    return _dependencies(plan.steps, plan.values, plan.buffers, arena=True)


def plan_streams(plan: Plan, max_streams: int = MAX_STREAMS) -> Schedule:
    """Assign the steps to at most ``max_streams`` streams, in plan order.

    A step continues the stream of a dependency that is the last step on its stream (a
    chain stays on one stream); when every such stream has moved on (a fork: a sibling
    branch took it), it takes a stream whose last step it depends on anyway, or a new one,
    or else the least recently used. It then waits, per other stream, for the latest of its
    dependencies there, unless that stream already told it (vector clocks), so each join
    is one event.
    """
    deps = step_dependencies(plan)
    ancestors = _ancestor_bits(deps)
    tail: List[int] = []                      # per stream: its last step
    clock: List[List[int]] = []               # per stream: the latest step of each stream it follows
    after: List[List[int]] = []               # per step: its stream's clock once it is done
    stream, waits = [], []
    for j, d in enumerate(deps):
        s = _pick_stream(d, ancestors[j], tail, max_streams)
        if s == len(tail):
            tail.append(-1)
            clock.append([-1] * max_streams)
        mine = []
        for other in range(len(tail)):
            latest = max((i for i in d if stream[i] == other), default=-1)
            if other != s and latest > clock[s][other]:
                mine.append(latest)
                clock[s] = [max(a, b) for a, b in zip(clock[s], after[latest])]
        tail[s] = j
        clock[s][s] = j
        after.append(list(clock[s]))
        stream.append(s)
        waits.append(mine)
    return Schedule(stream, waits, deps)


def _pick_stream(deps: List[int], ancestors: int, tail: List[int], max_streams: int) -> int:
    for i in sorted(deps, reverse=True):      # continue the chain of the latest dependency
        for s, t in enumerate(tail):
            if t == i:
                return s
    for s, t in enumerate(tail):              # a stream whose work this step follows anyway
        if t < 0 or ancestors >> t & 1:
            return s
    if len(tail) < max_streams:
        return len(tail)
    return min(range(len(tail)), key=lambda s: tail[s])


# ---------------------------------------------------------------------------- printing
def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def _where(plan: Plan, name: str) -> str:
    v = plan.values[name]
    b = plan.buffers[v.buf]
    kind = f"i8@{v.scale:.3g}" if v.scale is not None else b.dtype.replace("float", "f")
    sl = f"[{v.offset}:{v.offset + v.channels}]" if v.channels != b.channels else ""
    return f"B{b.id}{sl} {kind}"


def _step_line(plan: Plan, n: int, st: Step, config: Optional[str], stream: str) -> str:
    """Launch ``n`` of the plan as one line: op, layer, what it reads and writes, notes."""
    notes = []
    lay = st.layers[0] if st.layers else None
    op = st.op
    if st.op == "conv" and lay is not None:
        kh, kw = lay.attrs["kernel"]
        sh, _ = lay.attrs["stride"]
        op = f"conv{kh}x{kw}" + (f"/{sh}" if sh != 1 else "")
        if st.int8:
            notes.append("int8 GEMM")
        if any(l.relu for l in st.layers):
            notes.append("+relu")
        if st.residual:
            notes.append("+residual" + (" in place" if st.in_place else ""))
        if len(st.layers) > 1:
            notes.append(f"merged {len(st.layers)} heads")
    if st.op == "linear" and st.int8:
        notes.append("int8 GEMM")
    if st.why:
        notes.append(st.why)
    if config:
        notes.append(config)
    name = st.name if len(st.name) <= 58 else "..." + st.name[-55:]
    reads = ", ".join(_where(plan, i) for i in st.inputs)
    if st.residual:
        reads += " + " + _where(plan, st.residual)
    writes = ", ".join(_where(plan, o) for o in st.outputs)
    return f"{n:>4}  {stream:<10} {op:<10} {name:<58} {reads:<24} {writes:<34} {' '.join(notes)}"


def _display_numbers(plan: Plan) -> List[str]:
    """The number explain prints for each step (launches from 1; "in"/"out" for the ends)."""
    out, n = [], 0
    for st in plan.steps:
        if st.op in ("input", "output"):
            out.append("in" if st.op == "input" else "out")
        else:
            n += 1
            out.append(str(n))
    return out


def _streams_line(plan: Plan, sched: Schedule) -> str:
    """The stream summary: how many streams, how many steps on each, how many joins."""
    per = [sched.stream.count(k) for k in range(sched.n_streams)]
    return (f"streams (GPU, inside the CUDA graph): {sched.n_streams}, launches per stream "
            f"{'/'.join(map(str, per))}; {sum(len(w) for w in sched.waits)} event joins; "
            f"'s2 <5,7' = on stream 2, after launches 5 and 7 on other streams")


def explain_plan(plan: Plan, batch: int = 1, configs: Optional[Dict[int, str]] = None,
                 title: str = "") -> str:
    """The plan as text: summary of fusions and buffers, then one line per launch."""
    s = plan.stats
    lines = []
    c, h, w = plan.input_shape
    lines.append(f"triton plan{': ' + title if title else ''} | precision {plan.precision} "
                 f"(float values {plan.float_dtype}) | input {c}x{h}x{w}, batch {batch}")
    lines.append(
        f"fusions: {s['conv_layers']} convs in {s['conv_launches']} launches; "
        f"{s['relu_fused']} ReLUs in conv epilogues; {s['residuals']} residual epilogues "
        f"({s['residuals_in_place']} in place on the trunk); concats written in place: "
        f"{s['concats_in_place']}/{s['concats']} ({s['concat_copies']} input copies); merged 1x1 "
        f"heads: {s['merged_groups']} groups of {s['merged_heads']} heads"
        + (f"; int8 GEMMs: {s['int8_gemms']}" if plan.precision == "int8" else "")
        + f"; convert steps: {s['convert_steps']}")
    lines.append(f"buffers: {s['buffers']} in one arena of {_mib(s['arena_bytes_per_image'] * batch)}"
                 f" (without reuse {_mib(s['naive_bytes_per_image'] * batch)}), "
                 f"{s['steps']} launches")
    sched = plan_streams(plan)
    number = _display_numbers(plan)
    lines.append(_streams_line(plan, sched))
    lines.append("")
    lines.append(f"{'#':>4}  {'stream':<10} {'op':<10} {'layer':<58} {'reads':<24} {'writes':<34} notes")
    for idx, st in enumerate(plan.steps):
        joins = ",".join(number[i] for i in sched.waits[idx])
        stream = f"s{sched.stream[idx]}" + (f" <{joins}" if joins else "")
        if st.op in ("input", "output"):
            what = (f"NCHW float32 -> {_where(plan, st.outputs[0])}" if st.op == "input"
                    else f"{_where(plan, st.inputs[0])} -> float32 [{plan.values[st.inputs[0]].channels}]")
            lines.append(f"{'':>4}  {stream:<10} {st.op:<10} {what}")
            continue
        lines.append(_step_line(plan, int(number[idx]), st, (configs or {}).get(idx), stream))
    lines.append("")
    lines.append("buffers (per image; x batch at run time):")
    for b in plan.buffers:
        vals = [v for v in plan.values.values() if v.buf == b.id]
        lines.append(f"  B{b.id:<3} {b.h}x{b.w}x{b.channels} {b.dtype:<8} {_mib(b.nbytes):>10} "
                     f"@ {b.offset:>9}  live steps {b.first}-{b.last}  {len(vals)} values")
    return "\n".join(lines)
