"""The Q/DQ writer and :func:`quantize`, the one call from FP32 ONNX to INT8 ONNX."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .errors import CalibrationError
from .graph import QuantPlan, load_fp32, plan_quantization
from .methods import QMAX, quantize_weight
from .nodes import activation_qdq, qdq_names
from .options import QuantizeOptions
from .targets import (DEFAULT_TARGET, TARGET_FIELD, get_target, quantizes_head,
                      wants_bias_correction)


def write_qdq(proto, plan: QuantPlan, amax: Dict[str, float], unsigned_relu: bool = False,
              input_weight_qmax: int = QMAX):
    """Insert the plan's Q/DQ nodes into a copy of ``proto`` with activation ranges ``amax``.

    ``amax`` holds one value per activation tensor of the plan (scale groups already merged).
    unsigned_relu: uint8 (zero point 0, scale amax/255) on the plan's non-negative tensors.
    input_weight_qmax: the weight range of layers that read a graph input (signed int8
    activations; see ``calibration.targets``).
    Returns the new ModelProto (not checked, not saved).
    """
    import onnx
    from onnx import helper, numpy_helper

    missing = [t for t in plan.tensors if t not in amax]
    if missing:
        raise CalibrationError(f"no calibration range for {len(missing)} tensors (first: "
                               f"{missing[0]!r}); the statistics do not match this model")
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    new_inits = []

    # activation Q/DQ pairs, placed right after the producer (graph inputs: at the top)
    act_nodes: Dict[str, list] = {}
    for t in plan.tensors:
        inits_t, act_nodes[t] = activation_qdq(t, amax[t], qdq_names(t),
                                               unsigned=unsigned_relu and t in plan.nonnegative)
        new_inits += inits_t
    rewire = {(node, idx): qdq_names(t).dequantized
              for t, rs in plan.readers.items() for node, idx in rs}

    # weights: int8 initializer -> DequantizeLinear(axis) in front of the layer
    weight_nodes: Dict[str, object] = {}
    dropped = set()
    graph_inputs = {i.name for i in g.input}
    for layer in plan.layers:
        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        q, scale = quantize_weight(w, layer.axis, input_weight_qmax
                                   if layer.input in graph_inputs else QMAX)
        names = qdq_names(layer.weight)
        new_inits += [numpy_helper.from_array(q, names.quantized),
                      numpy_helper.from_array(scale, names.scale),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), names.zero_point)]
        weight_nodes[layer.node] = helper.make_node(
            "DequantizeLinear", [names.quantized, names.scale, names.zero_point],
            [names.dequantized], name=names.dequantize, axis=layer.axis)
        rewire[(layer.node, 1)] = names.dequantized
        dropped.add(layer.weight)

    nodes = []
    for t in plan.tensors:
        if t in graph_inputs:
            nodes += act_nodes.pop(t)
    for n in g.node:
        if n.name in weight_nodes:
            nodes.append(weight_nodes[n.name])
        for k in range(len(n.input)):
            new = rewire.get((n.name, k))
            if new is not None:
                n.input[k] = new
        nodes.append(n)
        for o in n.output:
            if o in act_nodes:
                nodes += act_nodes.pop(o)
    if act_nodes:
        raise CalibrationError(f"tensors without a producer: {sorted(act_nodes)[:3]}")
    still_used = {i for n in nodes for i in n.input}
    keep = [i for i in g.initializer if i.name not in dropped or i.name in still_used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.node[:]
    g.node.extend(nodes)
    return m


def _calibration_meta(method, percentile, stats, plan, exclude, auto_excluded, ranking,
                      from_cache, target, seconds):
    """The ``inception.calibration`` record: how the ranges were found and what was kept float."""
    meta = {"method": method, "activations": "per-tensor symmetric int8, zero point 0",
            "weights": "per-output-channel symmetric int8 (axis 0), max |w|",
            "num_images": stats.num_images if stats is not None else None,
            "dataset": stats.source if stats is not None else None,
            "exclude": list(exclude), "auto_excluded": list(auto_excluded),
            "excluded_nodes": plan.excluded,
            "quantized_layers": len(plan.layers), "qdq_tensors": len(plan.tensors)}
    if method == "percentile":
        meta["percentile"] = percentile
    meta["seconds"] = round(seconds, 3)
    if from_cache is not None:
        meta["from_cache"] = f"TRT-{from_cache.version}-{from_cache.algorithm}"
    if ranking is not None:
        meta["sensitivity"] = [{"node": r.node, "error": r.error, "agreement": r.agreement}
                               for r in ranking[: max(len(auto_excluded), 10)]]
    meta["activation_types"] = "uint8 (zero point 0) on non-negative tensors, else int8" \
        if target.unsigned_relu else "int8"
    if target.input_weight_qmax != QMAX:
        meta["input_layer_weights"] = f"per-output-channel symmetric, ±{target.input_weight_qmax}"
    meta[TARGET_FIELD] = target.name
    meta["fallback_precision"] = target.fallback
    return meta


def rereadable(data) -> bool:
    """Whether ``data`` can be read a second time (a path, an array, a list: not a one-shot
    iterator or generator)."""
    if data is None:
        return False
    try:
        return iter(data) is not data
    except TypeError:           # not iterable itself: a Path (or another path-like)
        return True


def _check_arguments(onnx_in, onnx_out, data, auto_exclude, bias_correction):
    """Reject what :func:`quantize` cannot do with these inputs before any work is done."""
    if isinstance(onnx_in, (str, Path)) and Path(onnx_in).resolve() == Path(onnx_out).resolve():
        raise CalibrationError(f"the output {onnx_out} would overwrite the FP32 input; "
                               "choose another file name")
    for name, wanted in (("auto_exclude", auto_exclude), ("bias_correction", bias_correction)):
        if wanted and data is None:
            raise CalibrationError(f"{name} needs calibration data (data=...): it runs the "
                                   "FP32 model over the images")
        if wanted and not rereadable(data):
            raise CalibrationError(f"{name} reads the calibration data again after the "
                                   "statistics; pass a list, an array or a path, not a "
                                   "one-shot iterator")


def _ranges_from_scales(plan, scales):
    """``(amax per plan tensor, the CalibrationCache or None)`` from given scales."""
    from .cache import CalibrationCache, read_cache
    if isinstance(scales, (str, Path)):
        scales = read_cache(scales)
    from_cache = scales if isinstance(scales, CalibrationCache) else None
    if from_cache is not None:
        scales = from_cache.amax()
    missing = [t for t in plan.tensors if t not in scales]
    if missing:
        raise CalibrationError(
            f"the given scales lack {len(missing)} of the {len(plan.tensors)} tensors to "
            f"quantize (first: {missing[0]!r}); they were made for another model or placement")
    return {t: float(scales[t]) for t in plan.tensors}, from_cache


def _ranges_from_statistics(proto, plan, stats, data, method, percentile, collect):
    """``(amax per plan tensor, statistics)``; the statistics are collected from ``data`` when
    none are given (``collect``: the keyword arguments of ``collect_statistics``)."""
    from .stats import collect_statistics
    if stats is None:
        if data is None:
            raise CalibrationError("quantize needs calibration data (data=...), "
                                   "statistics=... or scales=...")
        stats = collect_statistics(proto, data, tensors=plan.tensors, **collect)
    missing = [t for t in plan.tensors if t not in stats]
    if missing:
        raise CalibrationError(f"the statistics lack {len(missing)} tensors of this model "
                               f"(first: {missing[0]!r}); collect them on this model")
    return stats.amax(method, percentile, names=plan.tensors), stats


def _auto_exclude(proto, plan, amax, stats, data, count, method, percentile, exclude,
                  quantize_gemm, sensitivity_options):
    """Keep the ``count`` most sensitive layers in float: ``(new plan, amax, ranking)``.

    A passthrough op next to an excluded layer becomes quantized at its output only, so the
    new plan may need ranges the first one did not; they come from the statistics.
    """
    from .ranking import sensitivity
    ranking = sensitivity(proto, data, amax=plan.group_amax(amax), plan=plan,
                          **sensitivity_options)
    excluded = {r.node for r in ranking[:count]}
    plan = plan_quantization(proto, exclude, quantize_gemm=quantize_gemm,
                             excluded_nodes=excluded)
    missing = [t for t in plan.tensors if t not in amax]
    if missing:
        if stats is None:
            raise CalibrationError(f"no range for {missing[0]!r} in the given scales")
        amax = {**amax, **stats.amax(method, percentile, names=missing)}
    return plan, amax, ranking


def _correct_biases(proto, out, plan, amax, data, target, num_images, batch_size, threads):
    """Bias correction (``calibration/bias.py``) applied to ``out``; returns its record."""
    from .bias import apply_bias_shifts, bias_shifts
    shifts, seen = bias_shifts(proto, plan, amax, data, target.unsigned_relu,
                               target.input_weight_qmax, num_images, batch_size, threads)
    changed = apply_bias_shifts(out, shifts)
    largest = max((float(np.abs(s).max()) for s in shifts.values()), default=0.0)
    return {"images": seen, "convs": changed, "largest_shift": round(largest, 6)}


def _save(out, onnx_out, check, cache, cache_version, from_cache, amax):
    """Check ``out`` and write it (and the TensorRT cache, if asked) atomically."""
    import onnx
    from engine.fileio import atomic_path
    from .cache import CalibrationCache, DEFAULT_VERSION, write_cache
    if check:
        onnx.checker.check_model(out)
    with atomic_path(Path(onnx_out)) as tmp:
        onnx.save(out, str(tmp))
        if cache is not None:
            ver = cache_version or (from_cache.version if from_cache else DEFAULT_VERSION)
            write_cache(cache, CalibrationCache.from_amax(amax, version=ver))


def quantize(onnx_in, onnx_out, data=None, options: Optional[QuantizeOptions] = None, *,
             statistics=None, scales=None, cache=None, **overrides) -> "QuantizeResult":
    """Calibrate the FP32 ONNX ``onnx_in`` and write the symmetric Q/DQ ONNX ``onnx_out``.

    data: the calibration source (see :func:`calibration.data.batches`), unless ``statistics``
    (from :func:`collect_statistics`, to reuse one pass for several methods) or ``scales`` (a
    dict tensor -> amax, or a :class:`CalibrationCache` / cache path, as TensorRT or ModelOpt
    wrote it) is given. cache: also write a TensorRT calibration cache there (scales
    amax/127 either way).

    options: a :class:`calibration.QuantizeOptions` (method, exclude, target, bias
    correction, ...: each option and its default is there); ``overrides``: any of its
    options by keyword, over ``options`` (``quantize(a, b, data=x, method="minmax")``). An
    unknown keyword is an InputError naming the valid ones. The target "openvino" gets uint8
    (zero point 0) on non-negative tensors (ReLU outputs and their concats/pools);
    "tensorrt" (the default), "triton" and "onnxruntime" get signed int8 everywhere; the
    target is recorded in the metadata. ``unsigned_relu`` is deprecated (True means
    target="openvino", False target="tensorrt"). The output (and the cache) are written
    atomically. Returns a :class:`QuantizeResult`.
    """
    from engine.onnxmeta import META_CALIBRATION, META_PRECISION, set_metadata

    t0 = time.perf_counter()
    o = QuantizeOptions.of(options, **overrides)
    chosen = get_target(o.target or DEFAULT_TARGET)
    _check_arguments(onnx_in, onnx_out, data, o.auto_exclude, o.bias_correction)
    proto = load_fp32(onnx_in)
    exclude = list(o.exclude)
    head = quantizes_head(chosen, o.quantize_gemm)
    plan = plan_quantization(proto, exclude, quantize_gemm=head)
    stats, from_cache = statistics, None
    if scales is not None:
        try:
            amax, from_cache = _ranges_from_scales(plan, scales)
        except CalibrationError:
            if o.quantize_gemm is not None or not head:
                raise
            # scales made for a float head (a TensorRT or ModelOpt cache): keep the head float
            head = False
            plan = plan_quantization(proto, exclude, quantize_gemm=False)
            amax, from_cache = _ranges_from_scales(plan, scales)
    else:
        amax, stats = _ranges_from_statistics(
            proto, plan, stats, data, o.method, o.percentile,
            dict(num_images=o.num_images, batch_size=o.batch_size, threads=o.threads,
                 progress=o.progress))
    calib_seconds = time.perf_counter() - t0

    ranking = None
    if o.auto_exclude:
        plan, amax, ranking = _auto_exclude(
            proto, plan, amax, stats, data, o.auto_exclude, o.method, o.percentile, exclude,
            head, dict(num_images=o.sensitivity_images, batch_size=o.batch_size,
                       threads=o.threads, progress=o.progress))
    auto_excluded = [r.node for r in ranking[:o.auto_exclude]] if ranking is not None else []
    final = plan.group_amax(amax)
    out = write_qdq(proto, plan, final, unsigned_relu=chosen.unsigned_relu,
                    input_weight_qmax=chosen.input_weight_qmax)
    corrected = None
    if o.bias_correction or (o.bias_correction is None and rereadable(data)
                             and wants_bias_correction(chosen, o.method)):
        corrected = _correct_biases(proto, out, plan, final, data, chosen, o.bias_images,
                                    o.batch_size, o.threads)
        corrected["chosen"] = "asked" if o.bias_correction else "auto (target default)"
    meta = _calibration_meta(o.method, o.percentile, stats, plan, exclude, auto_excluded,
                             ranking, from_cache, chosen, time.perf_counter() - t0)
    meta["bias_correction"] = corrected
    set_metadata(out, {META_PRECISION: "int8", META_CALIBRATION: json.dumps(meta)})
    _save(out, onnx_out, o.check, cache, o.cache_version, from_cache, final)
    return QuantizeResult(Path(onnx_out), o.method, final, plan, stats, auto_excluded, ranking,
                          calib_seconds, time.perf_counter() - t0,
                          Path(cache) if cache is not None else None, chosen.name,
                          bias_correction=corrected)


def quantize_targets(onnx_in, outputs: Dict[str, object], data=None, statistics=None,
                     options: Optional[QuantizeOptions] = None,
                     **overrides) -> Dict[str, "QuantizeResult"]:
    """One Q/DQ file per target engine from one calibration pass.

    outputs: ``{target: path}`` (e.g. ``{"openvino": "m.ov.onnx", "tensorrt": "m.trt.onnx"}``).
    The statistics are collected once over ``data`` (unless given), then every file is
    written from them with ``options`` and ``overrides`` (method, exclude, percentile, ...:
    :class:`calibration.QuantizeOptions`; the target is each output's). Returns
    ``{target: QuantizeResult}``.
    """
    from .errors import CalibrationArgumentError
    from .stats import collect_statistics
    for name in outputs:
        get_target(name)
    given = {"target", "unsigned_relu"} & set(overrides)
    if given:
        raise CalibrationArgumentError(
            f"quantize_targets writes one file per target of outputs; drop {', '.join(given)}")
    o = QuantizeOptions.of(options, **overrides)
    if statistics is None:
        if data is None:
            raise CalibrationError("quantize_targets needs calibration data (data=...) or "
                                   "statistics=...")
        statistics = collect_statistics(onnx_in, data, num_images=o.num_images,
                                        batch_size=o.batch_size, threads=o.threads,
                                        progress=o.progress)
    # auto_exclude (sensitivity) and bias correction (asked, or the target's default) read
    # the data again; a one-shot iterator is spent by now
    again = data if rereadable(data) else None
    return {name: quantize(onnx_in, path, data=again, statistics=statistics,
                           options=replace(o, target=name))
            for name, path in outputs.items()}


class QuantizeResult:
    """What :func:`quantize` did: ``path``, ``method``, ``amax`` (per tensor, groups merged),
    ``plan``, ``statistics``, ``auto_excluded`` node names, ``sensitivity`` ranking (or None),
    ``calibration_seconds`` (statistics and ranges), ``seconds`` (all), ``cache`` path,
    ``target`` (the engine the layout is for), ``budget`` (a :class:`calibration.budget.Budget`
    when :func:`calibration.quantize_to_budget` chose the layers kept in float),
    ``bias_correction`` (its record when biases were corrected, else None)."""

    def __init__(self, path, method, amax, plan, statistics, auto_excluded, sensitivity,
                 calibration_seconds, seconds, cache, target=None, budget=None,
                 bias_correction=None):
        self.path, self.method, self.amax, self.plan = path, method, amax, plan
        self.statistics, self.auto_excluded, self.sensitivity = statistics, auto_excluded, sensitivity
        self.calibration_seconds, self.seconds, self.cache = calibration_seconds, seconds, cache
        self.target, self.budget, self.bias_correction = target, budget, bias_correction

    def __fspath__(self):
        return str(self.path)

    def __repr__(self):
        return (f"<QuantizeResult {self.path} method={self.method} layers={len(self.plan.layers)} "
                f"qdq={len(self.plan.tensors)} excluded={len(self.plan.excluded)} "
                f"{self.seconds:.1f}s>")
