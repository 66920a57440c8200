"""The Q/DQ writer and :func:`quantize`, the one call from FP32 ONNX to INT8 ONNX."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from engine.runtime import count_option

from .data import check_num_images
from .errors import CalibrationError
from .graph import QuantPlan, load_fp32, plan_quantization
from .methods import METHODS, QMAX, check_percentile, quantize_weight
from .nodes import activation_qdq, qdq_names
from .targets import TARGET_FIELD, quantizes_head, resolve_target, wants_bias_correction


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


def _check_arguments(onnx_in, onnx_out, data, method, auto_exclude, bias_correction):
    """Reject what :func:`quantize` cannot do before any work is done."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of "
                               f"{', '.join(METHODS)}")
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


def _check_numbers(percentile, num_images, batch_size, auto_exclude, sensitivity_images,
                   threads, bias_images):
    """Each number :func:`quantize` takes, in its range, or an InputError naming it."""
    check_percentile(percentile)
    check_num_images(num_images)
    count_option("batch_size", batch_size, allow_none=False)
    count_option("auto_exclude", auto_exclude, minimum=0, allow_none=False)
    count_option("sensitivity_images", sensitivity_images, allow_none=False)
    count_option("threads", threads)
    count_option("bias_images", bias_images, allow_none=False)


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


def quantize(onnx_in, onnx_out, data=None, method: str = "entropy", exclude: Sequence[str] = (),
             percentile: float = 99.99, num_images: Optional[int] = None, batch_size: int = 32,
             statistics=None, scales=None, auto_exclude: int = 0, sensitivity_images: int = 64,
             quantize_gemm: Optional[bool] = None, target: Optional[str] = None,
             unsigned_relu: Optional[bool] = None, bias_correction: Optional[bool] = None,
             bias_images: int = 128, cache=None,
             cache_version: Optional[str] = None,
             threads: Optional[int] = None, progress: bool = False, check: bool = True):
    """Calibrate the FP32 ONNX ``onnx_in`` and write the symmetric Q/DQ ONNX ``onnx_out``.

    data: the calibration source (see :func:`calibration.data.batches`), unless ``statistics``
    (from :func:`collect_statistics`, to reuse one pass for several methods) or ``scales`` (a
    dict tensor -> amax, or a :class:`CalibrationCache` / cache path, as TensorRT or ModelOpt
    wrote it) is given. method: minmax | percentile | entropy | mse. exclude: node names or
    module paths kept in float. auto_exclude: also keep the K layers of largest output error
    (:func:`calibration.sensitivity`, on the first ``sensitivity_images`` images) in float.
    quantize_gemm: the head (global pool, Flatten, classifier) in int8 too; None (default): the
    target's choice (``Target.quantize_head``: float on every target, measured faster).
    target: the engine the file is for (``calibration.targets.TARGETS``): "openvino" gets
    uint8 (zero point 0) on non-negative tensors (ReLU outputs and their concats/pools);
    "tensorrt" (the default), "triton" and "onnxruntime" get signed int8 everywhere. The
    target is recorded in the metadata. unsigned_relu: deprecated, True means target="openvino",
    False target="tensorrt". bias_correction: shift each conv's bias by the mean error
    quantization adds to its output, measured on the first ``bias_images`` images of ``data``
    (``calibration/bias.py``); None (default): where it was measured to help this target and
    method (:func:`calibration.targets.wants_bias_correction`) and ``data`` can be read
    again. cache: also write a TensorRT
    calibration cache there (scales amax/127 either way). The output (and the cache) are
    written atomically. Returns a :class:`QuantizeResult`.
    """
    from engine.onnxmeta import META_CALIBRATION, META_PRECISION, set_metadata

    t0 = time.perf_counter()
    chosen = resolve_target(target, unsigned_relu)
    _check_numbers(percentile, num_images, batch_size, auto_exclude, sensitivity_images,
                   threads, bias_images)
    _check_arguments(onnx_in, onnx_out, data, method, auto_exclude, bias_correction)
    proto = load_fp32(onnx_in)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    head = quantizes_head(chosen, quantize_gemm)
    plan = plan_quantization(proto, exclude, quantize_gemm=head)
    stats, from_cache = statistics, None
    if scales is not None:
        try:
            amax, from_cache = _ranges_from_scales(plan, scales)
        except CalibrationError:
            if quantize_gemm is not None or not head:
                raise
            # scales made for a float head (a TensorRT or ModelOpt cache): keep the head float
            head = False
            plan = plan_quantization(proto, exclude, quantize_gemm=False)
            amax, from_cache = _ranges_from_scales(plan, scales)
    else:
        amax, stats = _ranges_from_statistics(
            proto, plan, stats, data, method, percentile,
            dict(num_images=num_images, batch_size=batch_size, threads=threads,
                 progress=progress))
    calib_seconds = time.perf_counter() - t0

    ranking = None
    if auto_exclude:
        plan, amax, ranking = _auto_exclude(
            proto, plan, amax, stats, data, auto_exclude, method, percentile, exclude,
            head, dict(num_images=sensitivity_images, batch_size=batch_size,
                                threads=threads, progress=progress))
    auto_excluded = [r.node for r in ranking[:auto_exclude]] if ranking is not None else []
    final = plan.group_amax(amax)
    out = write_qdq(proto, plan, final, unsigned_relu=chosen.unsigned_relu,
                    input_weight_qmax=chosen.input_weight_qmax)
    corrected = None
    if bias_correction or (bias_correction is None and rereadable(data)
                           and wants_bias_correction(chosen, method)):
        corrected = _correct_biases(proto, out, plan, final, data, chosen, bias_images,
                                    batch_size, threads)
        corrected["chosen"] = "asked" if bias_correction else "auto (target default)"
    meta = _calibration_meta(method, percentile, stats, plan, exclude, auto_excluded, ranking,
                             from_cache, chosen, time.perf_counter() - t0)
    meta["bias_correction"] = corrected
    set_metadata(out, {META_PRECISION: "int8", META_CALIBRATION: json.dumps(meta)})
    _save(out, onnx_out, check, cache, cache_version, from_cache, final)
    return QuantizeResult(Path(onnx_out), method, final, plan, stats, auto_excluded, ranking,
                          calib_seconds, time.perf_counter() - t0,
                          Path(cache) if cache is not None else None, chosen.name,
                          bias_correction=corrected)


def quantize_targets(onnx_in, outputs: Dict[str, object], data=None, statistics=None,
                     num_images: Optional[int] = None, batch_size: int = 32,
                     threads: Optional[int] = None, progress: bool = False,
                     **options) -> Dict[str, "QuantizeResult"]:
    """One Q/DQ file per target engine from one calibration pass.

    outputs: ``{target: path}`` (e.g. ``{"openvino": "m.ov.onnx", "tensorrt": "m.trt.onnx"}``).
    The statistics are collected once over ``data`` (unless given), then every file is
    written from them with ``options`` (method, exclude, percentile, ...; see
    :func:`quantize`). Returns ``{target: QuantizeResult}``.
    """
    from .stats import collect_statistics
    from .targets import get_target
    for name in outputs:
        get_target(name)
    if statistics is None:
        if data is None:
            raise CalibrationError("quantize_targets needs calibration data (data=...) or "
                                   "statistics=...")
        statistics = collect_statistics(onnx_in, data, num_images=num_images,
                                        batch_size=batch_size, threads=threads,
                                        progress=progress)
    # auto_exclude (sensitivity) and bias correction (asked, or the target's default) read
    # the data again; a one-shot iterator is spent by now
    again = data if rereadable(data) else None
    return {name: quantize(onnx_in, path, data=again, statistics=statistics, target=name,
                           num_images=num_images, batch_size=batch_size, threads=threads,
                           progress=progress, **options)
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
