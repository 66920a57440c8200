"""INT8 calibration: FP32 ONNX + calibration images -> symmetric Q/DQ ONNX.

One call does it all::

    import calibration
    res = calibration.quantize("m.onnx", "m.int8.onnx", data="calib_images/",  # or .npz, array,
                               method="entropy",          # minmax | percentile | entropy | mse
                               exclude=("conv2d_1a",),    # node names or module paths kept float
                               num_images=512, cache="m.calib.cache")   # optional TRT cache
    res.amax, res.plan, res.statistics, res.calibration_seconds

One calibration, one file per target engine (each gets the Q/DQ layout it runs best;
``calibration/targets.py``)::

    calibration.quantize_targets("m.onnx", {"openvino": "m.ov.onnx", "tensorrt": "m.trt.onnx"},
                                 data="calib_images/", method="percentile")

Mixed precision to an accuracy budget (the most sensitive layers kept in float, greedily, until
the images lost on a validation split are, at ``confidence``, at most ``max_drop`` points;
``calibration/budget.py``)::

    res = calibration.quantize_to_budget("m.onnx", "m.ov.onnx", val_x, val_y, max_drop=0.3,
                                         confidence=0.95, data="calib_images/",
                                         target="openvino")
    res.budget.excluded, res.budget.loss, res.budget.bound

For a study over several methods, collect the statistics once and reuse them::

    plan = calibration.plan_quantization(calibration.load_fp32("m.onnx"))
    stats = calibration.collect_statistics("m.onnx", data, num_images=2000)  # one FP32 pass
    for method in calibration.METHODS:
        calibration.quantize("m.onnx", f"m.{method}.onnx", statistics=stats, method=method)

Public API (stable; extend, don't rename):

- ``quantize(onnx_in, onnx_out, data=None, options=None, *, statistics=None, scales=None,
  cache=None, **overrides) -> QuantizeResult``: ``options`` a ``QuantizeOptions``
  (``calibration/options.py``: method, exclude, percentile, num_images, batch_size,
  auto_exclude, sensitivity_images, quantize_gemm, target, bias_correction, bias_images,
  cache_version, threads, progress, check, each with its default there), ``overrides`` any
  of them by keyword (an unknown keyword is an InputError naming the valid ones;
  ``QuantizeOptions.of(options, **overrides)`` is the same check). ``bias_correction``:
  shift each conv's bias by the mean error quantization adds to its output
  (``calibration/bias.py``); None applies it where it was measured to help
  (``Target.bias_correction``: entropy), when ``data`` can be read again. ``target``:
  openvino | onnxruntime | tensorrt (default) | triton (``TARGETS``), recorded in the
  metadata; ``unsigned_relu`` is deprecated (True is target openvino, False tensorrt). ``scales`` takes a dict tensor -> amax, a
  ``CalibrationCache`` or a cache file path instead of data. Writes atomically; metadata
  ``inception.precision = "int8"`` and ``inception.calibration`` (JSON: method, percentile,
  num_images, dataset, exclude, auto_excluded, ...).
- ``quantize_targets(onnx_in, {target: path}, data=None, statistics=None, ...) -> {target:
  QuantizeResult}``: the statistics collected once for every file.
- ``quantize_to_budget(onnx_in, onnx_out, val_images, val_labels=None, data=...,
  statistics=None, evaluate=None, budget=None, options=None, **overrides) ->
  QuantizeResult``: ``budget`` a ``BudgetOptions`` (max_drop, metric "top1"|"agreement",
  method (or "auto": chosen on the validation split), max_excluded, search, confidence),
  ``options`` the ``QuantizeOptions`` of every file written, ``overrides`` any option of
  either by keyword (``.budget``: ``excluded``,
  ``losses``, ``images``, ``loss`` (observed, points), ``bound`` (its upper bound at
  ``confidence``, what is held to ``max_drop``), ``drop`` (= ``loss``), ``steps``,
  ``method``, ``methods_tried``, ``summary()``); a split too small for the budget is a
  ``CalibrationArgumentError`` naming the size it needs (``check_reachable``);
  ``greedy_exclusion(ranked, drop_with, max_drop, search="linear"|"bisect",
  confidence=0.95)``, ``choose_method``.
- ``collect_statistics(model, data, tensors=None, bins=2048, num_images=None, batch_size=32,
  threads=None, progress=False) -> Statistics`` (``.histograms``, ``.amax(method,
  percentile)``, ``.num_images``, ``.seconds``, ``.save(path)`` / ``Statistics.load(path)``).
- ``batches(source, model=None, batch_size=32, limit=None) -> iterator of float32 NCHW``:
  a folder of images, ``.npy``/``.npz``, an array/tensor, or any iterable of batches or
  ``(images, labels)`` pairs; checked against the model input.
- ``compute_amax(hist, method, percentile)``, ``METHODS``, ``Histogram``; ``weight_amax``,
  ``quantize_weight`` (per output channel, axis 0).
- ``plan_quantization(proto, exclude=(), quantize_gemm=False) -> QuantPlan`` (``.layers``,
  ``.tensors``, ``.groups``, ``.readers``): where the Q/DQ nodes go; ``load_fp32(path)``.
- ``sensitivity(model, data, amax=None, method="entropy", layers=None, num_images=64) ->
  [LayerSensitivity(node, module, error, agreement)]``, worst first (in
  ``calibration/ranking.py``: a submodule named like the function would replace it here once
  imported).
- ``read_cache(path) -> CalibrationCache`` (``.scales``, ``.amax()``, ``.version``),
  ``write_cache(path, scales_or_cache, version="8601")``, ``scale_to_hex``, ``hex_to_scale``.
- Errors: ``CalibrationError`` (an ``engine.EngineError``), ``CalibrationDataError`` (also an
  ``engine.InputError``), ``AlreadyQuantizedError``, ``CacheError`` (also ``ArtifactError``).

Placement (see ``calibration/graph.py``): Q/DQ on conv inputs (one shared pair per tensor) and
per-channel int8 weights; none on conv outputs; residual Add reads only its shortcut
quantized; Concat inputs and output (and MaxPool input/output) share one scale; Gemm stays
float by default. Activations are int8 (TensorRT's only Q/DQ type) for targets tensorrt,
triton and onnxruntime; target openvino makes non-negative tensors (ReLU outputs, their
concats and pools) uint8 with zero point 0, which OpenVINO needs to run every Concat, and the
conv after it, in int8, and gives the layers reading the image 7-bit weights (no int16
saturation on CPUs without VNNI). CLI: ``inception-engine quantize IN.onnx OUT.onnx --method
entropy --calib DIR|FILE.npz [--target openvino] [--max-drop 0.1]``.

Measured on the study subject (benchmarks/RESULTS.md, "INT8 calibration"): minmax, percentile
and mse stay within 0.3 pt of FP32; entropy (faithful to TensorRT) clips the first layer's
spiky output and loses 4 pt unless ``auto_exclude`` keeps the layer reading it in float; bias
correction (on by default for entropy) takes back part of that.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "quantize": "calibration.qdq",
    "QuantizeResult": "calibration.qdq",
    "quantize_targets": "calibration.qdq",
    "QuantizeOptions": "calibration.options",
    "BudgetOptions": "calibration.options",
    "TARGETS": "calibration.targets",
    "quantize_to_budget": "calibration.budget",
    "greedy_exclusion": "calibration.budget",
    "choose_method": "calibration.budget",
    "Budget": "calibration.budget",
    "write_qdq": "calibration.qdq",
    "bias_shifts": "calibration.bias",
    "apply_bias_shifts": "calibration.bias",
    "quantize_weight": "calibration.methods",
    "collect_statistics": "calibration.stats",
    "Statistics": "calibration.stats",
    "Histogram": "calibration.stats",
    "batches": "calibration.data",
    "compute_amax": "calibration.methods",
    "weight_amax": "calibration.methods",
    "METHODS": "calibration.methods",
    "plan_quantization": "calibration.graph",
    "load_fp32": "calibration.graph",
    "QuantPlan": "calibration.graph",
    "module_path": "calibration.graph",
    "sensitivity": "calibration.ranking",
    "LayerSensitivity": "calibration.ranking",
    "read_cache": "calibration.cache",
    "write_cache": "calibration.cache",
    "CalibrationCache": "calibration.cache",
    "scale_to_hex": "calibration.cache",
    "hex_to_scale": "calibration.cache",
}

from .errors import (  # noqa: E402,F401
    AlreadyQuantizedError, CacheError, CalibrationDataError, CalibrationError)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'calibration' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
