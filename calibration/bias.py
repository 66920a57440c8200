"""Bias correction: undo the mean shift that quantization adds to each convolution's output.

Rounding the weights and rounding (and clipping) the input change a convolution's output by an
error whose mean over the images is not zero: clipping a ReLU output's long tail lowers its
mean, and per-channel weight rounding leaves each output channel a small systematic offset.
The next layers see that offset on every image. Where the layer has a bias, the offset can be
taken back for free: add ``mean(float output) - mean(quantized output)`` per output channel.

This is the layer-local rule (NNCF's "fast bias correction" uses the same one): each conv is
fed its *float* input from the FP32 model, once as is with the float weights, once through the
file's own activation Q/DQ with the file's int8 weights, and the two outputs' channel means are
compared. Layer-local means the shifts are independent of each other, so one pass over the
images gives them all; upstream errors are not folded in (that would tie every shift to the
correction of the layers before it).

The correction is computed with the same layout the file is written with (uint8 after ReLU for
target openvino, the 7-bit weights of the layers reading the image, scale groups merged), so
the shift is the one the target engine's arithmetic produces, up to the engine's own rounding.
Only convolutions are corrected; a quantized Gemm (``quantize_gemm``) keeps its bias.

Whether it pays depends on the method: measured per method and target on the shipped
subjects (benchmarks/RESULTS.md, "Bias correction"), it recovers much of what entropy's hard
clipping loses and does nothing reliable for the other methods; ``calibration.targets`` turns
it on by default only where it helped on the validation split.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .errors import CalibrationDataError, CalibrationError
from .graph import QuantPlan
from .methods import QMAX, UINT8_MAX, amax_to_scale, quantize_weight

DEFAULT_IMAGES = 128     # enough for a stable channel mean; NNCF's default subset is 100-300


def _conv_attributes(node) -> dict:
    """The Conv node's geometry as torch's conv2d takes it (pads applied separately)."""
    from onnx import helper
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise CalibrationError(f"bias correction: conv {node.name!r} uses auto_pad; export "
                               "with explicit pads or pass bias_correction=False")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise CalibrationError(f"bias correction handles 2-D convolutions; {node.name!r} has "
                               f"pads {pads}")
    return {"stride": tuple(attrs.get("strides", (1, 1))),
            "dilation": tuple(attrs.get("dilations", (1, 1))),
            "groups": int(attrs.get("group", 1)),
            # ONNX: [top, left, bottom, right]; F.pad: (left, right, top, bottom)
            "pad": (pads[1], pads[3], pads[0], pads[2])}


class _LayerError:
    """One conv's float and quantized weights, its input's fake quantizer, and the running sum
    of ``float output - quantized output`` per output channel."""

    def __init__(self, node, weight: np.ndarray, input_scale: float, unsigned: bool, qmax: int):
        import torch
        self.geometry = _conv_attributes(node)
        q, scale = quantize_weight(weight, 0, qmax)
        self.weight = torch.from_numpy(weight)
        self.weight_q = torch.from_numpy(q.astype(np.float32) * scale.reshape(-1, 1, 1, 1))
        self.scale = float(input_scale)
        # QuantizeLinear saturates to the storage type's range
        self.low, self.high = (0.0, float(UINT8_MAX)) if unsigned else (-128.0, 127.0)
        self.total = torch.zeros(weight.shape[0], dtype=torch.float64)
        self.count = 0

    def add(self, x):
        import torch
        import torch.nn.functional as F
        g = self.geometry
        x = torch.from_numpy(x)
        xq = torch.clamp(torch.round(x / self.scale), self.low, self.high) * self.scale
        if any(g["pad"]):
            x, xq = F.pad(x, g["pad"]), F.pad(xq, g["pad"])
        conv = dict(stride=g["stride"], dilation=g["dilation"], groups=g["groups"])
        diff = F.conv2d(x, self.weight, **conv) - F.conv2d(xq, self.weight_q, **conv)
        self.total += diff.double().sum(dim=(0, 2, 3))
        self.count += diff.shape[0] * diff.shape[2] * diff.shape[3]

    def shift(self) -> np.ndarray:
        return (self.total / max(self.count, 1)).float().numpy()


def bias_shifts(proto, plan: QuantPlan, amax: Dict[str, float], data, unsigned_relu: bool,
                input_weight_qmax: int = QMAX, num_images: int = DEFAULT_IMAGES,
                batch_size: int = 32, threads: Optional[int] = None):
    """``({conv node: per-output-channel bias shift}, images used)`` for every quantized conv
    of ``plan``.

    proto: the FP32 model; amax: the final per-tensor ranges (groups merged, as written);
    unsigned_relu / input_weight_qmax: the target's layout (see ``calibration.targets``);
    data: the calibration source (``calibration.data.batches``), of which the first
    ``num_images`` images are used.
    """
    import torch
    from onnx import numpy_helper
    from .data import batches, describe_source
    from .stats import _session_with_outputs
    inits = {i.name: i for i in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    graph_inputs = {i.name for i in proto.graph.input}
    convs = [layer for layer in plan.layers if layer.op_type == "Conv"]
    errors = {}
    for layer in convs:
        unsigned = unsigned_relu and layer.input in plan.nonnegative
        scale = float(amax_to_scale(amax[layer.input], UINT8_MAX if unsigned else QMAX))
        qmax = input_weight_qmax if layer.input in graph_inputs else QMAX
        errors[layer.node] = _LayerError(nodes[layer.node],
                                         numpy_helper.to_array(inits[layer.weight])
                                         .astype(np.float32), scale, unsigned, qmax)
    inputs = list(dict.fromkeys(layer.input for layer in convs))
    sess = _session_with_outputs(proto, inputs, threads)
    feed = sess.get_inputs()[0].name
    seen = 0
    with torch.no_grad():
        for x in batches(data, model=proto, batch_size=batch_size, limit=num_images):
            values = dict(zip(inputs, sess.run(inputs, {feed: x})))
            for layer in convs:
                errors[layer.node].add(values[layer.input])
            seen += len(x)
    if seen == 0:
        raise CalibrationDataError(f"bias correction got no images from "
                                   f"{describe_source(data)}")
    return {name: e.shift() for name, e in errors.items()}, seen


def apply_bias_shifts(model, shifts: Dict[str, np.ndarray]) -> int:
    """Add each conv's shift to its bias in ``model`` (a Q/DQ ModelProto, edited in place).

    A conv without a bias gets one; a bias initializer shared with another node is copied
    first, so only this conv changes. Returns the number of convs changed.
    """
    from onnx import numpy_helper
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses: Dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    changed = 0
    for n in g.node:
        shift = shifts.get(n.name)
        if shift is None:
            continue
        old = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if old is not None and old not in inits:
            raise CalibrationError(f"conv {n.name!r} computes its bias at run time; bias "
                                   "correction needs it as an initializer")
        bias = (numpy_helper.to_array(inits[old]).astype(np.float32) if old is not None
                else np.zeros_like(shift))
        new = numpy_helper.from_array((bias + shift).astype(np.float32),
                                      old if old is not None and uses[old] == 1
                                      else f"{n.name}_bias_corrected")
        if new.name in inits:
            inits[new.name].CopyFrom(new)
        else:
            g.initializer.append(new)
            inits[new.name] = g.initializer[-1]
            if len(n.input) > 2:
                n.input[2] = new.name
            else:
                n.input.append(new.name)
        changed += 1
    return changed
