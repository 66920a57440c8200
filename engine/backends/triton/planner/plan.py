"""Layer list -> execution plan: storage and precision per value, in-place concats, merged
1x1 heads, in-place residuals, one arena of buffers (the passes of ``_Planner.PASSES``).

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
to each head's home (up to ``MAX_HEADS`` per launch: the conv kernel's destination limit,
:data:`kernels.launches.MAX_DESTINATIONS`).

Residuals: ``relu(shortcut + conv(y))`` is the conv's epilogue; when the conv is the last
reader of the shortcut and both are whole buffers of one shape and dtype, the output
overwrites the shortcut in place (the trunk of an Inception-ResNet stage is one buffer).

Arena: buffers get byte offsets in one arena per batch size, computed per image and scaled
by the batch, first fit and biggest first. Two buffers may share bytes only when the steps
that touch one are all dependency-ancestors of the steps that touch the other
(:mod:`.dependencies`), so reuse never orders launches that could run on parallel streams.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from kernels.launches import MAX_DESTINATIONS

from ....errors import UnsupportedGraphError, UnsupportedPrecisionError
from ..graph import Layer, LayerGraph, ReadsValues, follow_aliases
from .dependencies import ancestor_bits, dependencies, ready_steps

MAX_HEADS = MAX_DESTINATIONS   # 1x1 heads one conv launch can write
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
class Step(ReadsValues):
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
        return ready_steps(self.steps, self.values)

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
    """The passes of :data:`PASSES`, run in that order over one layer graph; each pass reads
    what the earlier ones decided and records its counts in ``stats``."""

    # The pass order, the one place it is written. Storage first (every later pass needs to
    # know which values are int8), then the steps, the in-place concats and the merged heads
    # (which change which step writes where), then buffers and the arena.
    PASSES = (
        "merge_identical_quants",    # identical Q/DQ pairs on one tensor: one value
        "storage_where_produced",    # forward: each value's storage where it is made
        "storage_of_input",          # the graph input, quantised by the input step
        "drop_identity_quants",      # Q/DQ on a value already on that grid: nothing
        "storage_from_concats",      # backward: a concat's storage to the inputs only it reads
        "build_steps",               # one step per launch, convert steps where storage differs
        "place_concats",             # each concat input written into its slice
        "merge_heads",               # 1x1 heads on one input: one launch
        "assign_buffers",            # a buffer per root value, slices into it
        "residuals_in_place",        # the trunk overwritten by its last reader
        "drop_unused_buffers",       # buffers taken over in place: gone
        "pack_arena",                # byte offsets in one arena
    )

    def __init__(self, lg: LayerGraph, precision: str, float_dtype: str):
        self.lg = lg
        self.precision = precision
        self.fdt = float_dtype
        self.vals = _shapes(lg)
        self.alias: Dict[str, str] = {}                  # merged Q/DQ output -> the value it equals
        self.layers: List[Layer] = list(lg.layers)
        self.prod: Dict[str, Layer] = {l.output: l for l in self.layers}
        self.steps: List[Step] = []
        self.stats: Dict[str, int] = {}
        self.output = ""                                 # the value the output step reads
        self.home: Dict[str, Tuple[str, int]] = {}       # value -> (root value, channel offset)
        self.bufs: List[Buffer] = []
        self.arena = 0                                   # bytes per image

    def run(self):
        for name in self.PASSES:
            getattr(self, name)()

    def value_name(self, name: str) -> str:
        """The value ``name`` stands for, after the aliases of merged Q/DQ pairs."""
        return follow_aliases(self.alias, name)

    def consumers(self) -> Dict[str, List[Layer]]:
        out: Dict[str, List[Layer]] = {}
        for lay in self.layers:
            for i in lay.reads:
                out.setdefault(self.value_name(i), []).append(lay)
        return out

    def canon(self):
        for lay in self.layers:
            lay.inputs = [self.value_name(i) for i in lay.inputs]
            if lay.residual:
                lay.residual = self.value_name(lay.residual)

    # ------------------------------------------------------------ storage (Q/DQ)
    def storage_of_input(self):
        """The graph input is quantised by the input step when every reader quantises it alike."""
        scale = _common_quant_scale(self.consumers().get(self.lg.input, []))
        if scale is not None:
            self.vals[self.lg.input].scale = scale

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
                if self.vals[lay.output].scale is not None and not int8:   # can_emit_int8 prevents it
                    raise _unsupported(lay, "a float conv planned to write int8 (a planner fault: "
                                       "please report it with the ONNX file)")
                self.steps.append(st)
            elif lay.kind in ("maxpool", "avgpool", "gap"):
                self.steps.append(Step(lay.kind, lay.name, [x], [lay.output], [lay],
                                       fused=list(lay.nodes[1:])))
                if lay.kind == "maxpool" and self.vals[lay.output].scale != xv.scale:
                    raise _unsupported(lay, "a max pool planned to change the int8 scale (a planner "
                                       "fault: please report it with the ONNX file)")
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
        home = self.home
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
        deps = dependencies(self.steps, self.vals, self.bufs, arena=False)
        ancestors = ancestor_bits(deps)
        touch = [0] * len(self.bufs)               # per buffer: the steps that access it
        for idx, st in enumerate(self.steps):
            for name in st.reads + st.outputs:
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
            for name in st.outputs + st.reads:
                b = self.bufs[self.vals[name].buf]
                b.first = min(b.first, idx)
                b.last = max(b.last, idx)
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
        raise UnsupportedPrecisionError(f"float dtype {fdt!r} is not one the triton plans store; "
                                        f"pass one of: {', '.join(FLOAT_DTYPES)}")
    p = _Planner(lg, precision, fdt)
    p.run()
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
