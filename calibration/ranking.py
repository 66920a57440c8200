"""Per-layer sensitivity: the output error when only one layer is quantized.

One ONNX Runtime session holds every layer twice, float and quantize-dequantized, as the two
branches of an ``If`` on a boolean input per layer, so ranking all layers costs one session
and one FP32-priced run of the sample per layer instead of one model (and session) per layer. A layer's quantization is the one the Q/DQ writer would give
it: its input activation (with its scale group's range), its per-channel weights and, for a
residual up-projection, the shortcut read by its Add.

The error is the relative squared error of the logits, ``||y_q - y||^2 / ||y||^2``, over the
sample, and the top-1 agreement with FP32 in percent; layers rank by the error, worst first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import CalibrationError


@dataclass
class LayerSensitivity:
    node: str            # ONNX node name of the layer
    module: str          # PyTorch module path
    error: float         # relative squared error of the output with only this layer quantized
    agreement: float     # top-1 agreement with FP32, percent


def _switched_model(proto, plan, amax):
    """A copy of ``proto`` with a bool input ``qswitch_<i>`` per layer of ``plan``.

    Each layer becomes an ``If`` on its switch: the then-branch runs it quantize-dequantized
    (Q/DQ on the input, int8-rounded constant weights), the else-branch runs it as it was.
    Only the taken branch runs and every weight stays a constant, so a pass costs about what
    the FP32 graph costs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from .methods import quantize_weight
    from .nodes import activation_qdq, qdq_names

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    add_by_conv = {conv: add for add, conv in plan.shortcut_of.items()}
    nodes_by_name = {n.name: n for n in g.node}
    replace: Dict[str, list] = {}   # node name -> nodes that take its place
    switches = []

    def quant_pair(t, base):
        """The writer's int8 pair on ``t``, named after ``base``: (nodes, dequantized tensor)."""
        names = qdq_names(base)
        inits, pair = activation_qdq(t, amax[t], names)
        g.initializer.extend(inits)
        return pair, names.dequantized

    def out_info(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    for i, layer in enumerate(plan.layers):
        sw = f"qswitch_{i}"
        switches.append(sw)
        g.input.append(helper.make_tensor_value_info(sw, TensorProto.BOOL, []))
        node = nodes_by_name[layer.node]
        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        q, scale = quantize_weight(w, layer.axis)
        shape = [1] * w.ndim
        shape[layer.axis] = -1
        wdq_name = f"{layer.weight}_sens_dq"
        g.initializer.append(numpy_helper.from_array(
            (q.astype(np.float32) * scale.reshape(shape)).astype(np.float32), wdq_name))
        qn, x_dq = quant_pair(node.input[0], f"{layer.node}_sens")
        qnode = helper.make_node(node.op_type, [x_dq, wdq_name] + list(node.input[2:]),
                                 [node.output[0] + "_sens_then"])
        qnode.attribute.extend(node.attribute)
        fnode = helper.make_node(node.op_type, list(node.input), [node.output[0] + "_sens_else"])
        fnode.attribute.extend(node.attribute)
        then_g = helper.make_graph(qn + [qnode], f"{layer.node}_q", [], [out_info(qnode.output[0])])
        else_g = helper.make_graph([fnode], f"{layer.node}_f", [], [out_info(fnode.output[0])])
        replace[layer.node] = [helper.make_node("If", [sw], [node.output[0]], name=layer.node,
                                                then_branch=then_g, else_branch=else_g)]
        if layer.node in add_by_conv:
            add = nodes_by_name[add_by_conv[layer.node]]
            idx = 1 if add.input[0] == node.output[0] else 0
            t = add.input[idx]
            qn, s_dq = quant_pair(t, f"{add.name}_sens")
            ident_q = helper.make_node("Identity", [s_dq], [t + "_sens_then"])
            ident_f = helper.make_node("Identity", [t], [t + "_sens_else"])
            then_g = helper.make_graph(qn + [ident_q], f"{add.name}_q", [], [out_info(t + "_sens_then")])
            else_g = helper.make_graph([ident_f], f"{add.name}_f", [], [out_info(t + "_sens_else")])
            sel = f"{add.name}_sens_shortcut"
            replace[add.name] = [helper.make_node("If", [sw], [sel], then_branch=then_g,
                                                  else_branch=else_g), add]
            add.input[idx] = sel
    nodes = []
    for n in g.node:
        nodes += replace.get(n.name, [n])
    del g.node[:]
    g.node.extend(nodes)
    return m, switches


def sensitivity(model, data, amax: Optional[Dict[str, float]] = None, method: str = "entropy",
                percentile: float = 99.99, plan=None, exclude: Sequence[str] = (),
                layers: Optional[Sequence[str]] = None, num_images: int = 64,
                batch_size: int = 32, threads: Optional[int] = None,
                progress: bool = False) -> List[LayerSensitivity]:
    """Rank layers by the output error when only that layer is quantized (worst first).

    model: FP32 ONNX path or proto. data: a calibration source (the first ``num_images`` are
    used). amax: per-tensor ranges (default: calibrated here with ``method`` on the same
    images). layers: restrict to these node names or module paths (default: every layer).
    """
    import onnxruntime as ort
    from .data import batches
    from .graph import load_fp32, plan_quantization, resolve_exclude
    from .stats import collect_statistics

    proto = load_fp32(model)
    if plan is None:
        plan = plan_quantization(proto, exclude)
    sample = list(batches(data, model=proto, batch_size=batch_size, limit=num_images))
    if amax is None:
        stats = collect_statistics(proto, sample, tensors=plan.tensors, threads=threads)
        amax = plan.group_amax(stats.amax(method, percentile, names=plan.tensors))
    chosen = range(len(plan.layers))
    if layers is not None:
        want = resolve_exclude(proto, layers)
        chosen = [i for i, l in enumerate(plan.layers) if l.node in want]
        if not chosen:
            raise CalibrationError(f"none of {list(layers)} is a quantized layer")
    m, switches = _switched_model(proto, plan, amax)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    in_name = proto.graph.input[0].name
    off = {s: np.array(False) for s in switches}

    def run(active):
        feeds = dict(off)
        if active is not None:
            feeds[switches[active]] = np.array(True)
        return np.concatenate([sess.run(None, {**feeds, in_name: x})[0] for x in sample])

    ref = run(None)
    ref_top = ref.argmax(1)
    denom = float((ref.astype(np.float64) ** 2).sum()) or 1.0
    it = chosen
    if progress:
        from tqdm import tqdm
        it = tqdm(chosen, desc="sensitivity", unit="layer", leave=False)
    out = []
    for i in it:
        y = run(i)
        err = float(((y.astype(np.float64) - ref) ** 2).sum()) / denom
        agree = float((y.argmax(1) == ref_top).mean() * 100.0)
        layer = plan.layers[i]
        out.append(LayerSensitivity(layer.node, layer.module, err, agree))
    out.sort(key=lambda r: (-r.error, r.agreement))
    return out
