"""OpenVINO runtime: the CPU default.

Precision is set explicitly through the inference-precision hint, because OpenVINO's own
default on CPUs with AMX or AVX512-BF16 is BF16 even for an FP32 model:

- ``fp32``: ``INFERENCE_PRECISION_HINT=f32``;
- ``bf16``: ``INFERENCE_PRECISION_HINT=bf16``, only where the CPU reports ``BF16`` in
  ``OPTIMIZATION_CAPABILITIES`` (AVX512-BF16 or AMX); elsewhere a clear error, since
  OpenVINO would silently run FP32;
- ``int8``: the file is a Q/DQ ONNX (its metadata says ``inception.precision=int8``, or it
  holds QuantizeLinear nodes); OpenVINO's low-precision transformations run the quantized
  convs in INT8, the rest (layers kept in float, the classifier) in bf16 where the CPU has
  it, else f32: the fallback ``calibration.targets`` promises for the openvino target
  (``config={"INFERENCE_PRECISION_HINT": "f32"}`` keeps it f32).

The model is compiled once, with a dynamic batch axis, so one compiled model serves any batch
size; ``static_batch=N`` reshapes it to a fixed batch first. Threads: ``INFERENCE_NUM_THREADS``;
performance hint ``LATENCY`` by default (``hint="throughput"`` for serving many callers).

Many callers at once: the runtime keeps a pool of infer requests, as many as the compiled
model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (one per stream: 1 under ``LATENCY``, several
under ``THROUGHPUT``). A call takes a free request (waiting while all are busy), runs it,
copies the output out and gives the request back, so calls from different threads never share
a request and, under ``hint="throughput"``, run in parallel on different streams.

Errors from OpenVINO while reading or compiling the file come back as
:class:`~engine.errors.ArtifactError` naming the file and what to do.
"""
from __future__ import annotations

import queue
import re
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError, InputError
from ..onnxmeta import read_metadata, resolve_precision
from ..runtime import Runtime, TensorSpec, count_option, engine_failure
from . import require

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _precision_hint(precision: str, device: str) -> str:
    """The inference-precision hint; an INT8 file's float layers get bf16 where it is native."""
    if precision == "int8":
        return "bf16" if supports("bf16", device) else "f32"
    return _PRECISION_HINT[precision]
_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT",
          "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}


def is_available():
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return False, f"openvino cannot be imported ({e}); pip install openvino"
    return True, "available"


def capabilities(device: str = "CPU") -> list:
    """The device's ``OPTIMIZATION_CAPABILITIES`` (e.g. ['FP32', 'INT8', 'BF16'])."""
    ov = require("openvino", "openvino")
    return list(ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES"))


def supports(precision: str, device: str = "CPU") -> bool:
    """Whether ``device`` runs ``precision`` natively (bf16 needs AVX512-BF16 or AMX)."""
    caps = {c.upper() for c in capabilities(device)}
    return {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}[precision] in caps


def _spec(port) -> TensorSpec:
    ps = port.get_partial_shape()
    shape = tuple(None if d.is_dynamic else d.get_length() for d in ps)
    dtype = port.get_element_type().to_dtype().name if hasattr(port.get_element_type(), "to_dtype") \
        else "float32"
    return TensorSpec(port.get_any_name(), shape, dtype)


class OpenVINORuntime(Runtime):
    backend = "openvino"

    def __init__(self, path, precision: Optional[str] = None, threads: Optional[int] = None,
                 hint: str = "latency", num_streams: Optional[int] = None,
                 static_batch: Optional[int] = None, device: str = "CPU",
                 check_finite: bool = True, config: Optional[dict] = None):
        ov = require("openvino", "openvino")
        threads = count_option("threads", threads)
        num_streams = count_option("num_streams", num_streams)
        static_batch = count_option("static_batch", static_batch)
        if hint not in _HINTS:
            raise InputError(f"hint must be one of {', '.join(_HINTS)}, got {hint!r}")
        path = Path(path)
        info = read_metadata(path) if path.suffix == ".onnx" else None
        file_prec = info["precision"] if info else "fp32"
        precision = resolve_precision(precision, file_prec, ("fp32", "bf16", "fp16", "int8"),
                                      self.backend, path)
        if precision in ("bf16", "fp16") and not supports(precision, device):
            caps = ", ".join(capabilities(device))
            raise BackendUnavailableError(
                f"this {device} does not support {precision.upper()} in OpenVINO "
                f"(OPTIMIZATION_CAPABILITIES: {caps}; BF16 needs AVX512-BF16 or AMX); OpenVINO "
                "would silently run FP32. Use precision='fp32' here, or a CPU with AMX "
                "(Sapphire Rapids or newer)")
        self.core = ov.Core()
        model = _read_model(self.core, path)
        if static_batch is not None:
            shape = model.inputs[0].get_partial_shape()
            shape[0] = static_batch
            model.reshape({model.inputs[0].get_any_name(): shape})
        self._model = model
        props = {"INFERENCE_PRECISION_HINT": _precision_hint(precision, device),
                 "PERFORMANCE_HINT": _HINTS[hint]}
        if threads is not None:
            props["INFERENCE_NUM_THREADS"] = threads
        if num_streams is not None:
            props["NUM_STREAMS"] = num_streams
        if config:
            props.update(config)
        self.device = device
        self.threads = threads
        self.properties = props
        self.compiled = _compile(self.core, model, device, props, path)
        self._requests = _request_pool(self.compiled)
        super().__init__(path=path, precision=precision,
                         config=info["config"] if info else None,
                         inputs=[_spec(p) for p in self.compiled.inputs],
                         outputs=[_spec(p) for p in self.compiled.outputs],
                         check_finite=check_finite)
        self.metadata = info["props"] if info else {}

    @property
    def num_requests(self) -> int:
        """How many calls can run at once (the size of the infer-request pool)."""
        return self._requests.maxsize

    def _infer(self, x: np.ndarray) -> np.ndarray:
        pool = self._requests
        request = pool.get()
        try:
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()
        except RuntimeError as e:          # what OpenVINO raises for a failed inference
            raise engine_failure(self.backend, self.path, _openvino_reason(e)) from e
        finally:
            pool.put(request)

    def intermediates(self, x, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Run ``x`` with ``names`` (ONNX tensor names) added as model outputs.

        The extended model is compiled once per set of names, with the same properties; each
        call runs on a request of its own.
        """
        arr = self.check_input(x)
        names = tuple(names) if names is not None else tuple(
            n for n in _all_tensor_names(self._model) if n)
        compiled = self._build_once("intermediates", names,
                                    lambda: self._compile_with_outputs(names))
        res = compiled.create_infer_request().infer({0: arr})
        out = {}
        for port, val in res.items():
            for n in port.get_names():
                if n in names:
                    out[n] = np.array(val, copy=True)
        return out

    def _compile_with_outputs(self, names: Sequence[str]):
        """The model with the tensors ``names`` added as outputs, compiled like the main one."""
        m = self._model.clone()
        known = _all_tensor_names(m)
        missing = [n for n in names if n not in known]
        if missing:
            raise KeyError(f"tensors not in the model: {', '.join(missing[:5])}")
        m.add_outputs(list(names))
        return _compile(self.core, m, self.device, self.properties, self.path)

    def close(self):
        self._requests = None
        self.compiled = None
        super().close()


# ----------------------------------------------------------------------------- what ran how
# The runtime model's layer types that compute (what a float island is made of); the rest
# (Input, Output, Reorder, Convert, Reshape, ...) only move or relabel data.
COMPUTE_LAYERS = frozenset({"Convolution", "Deconvolution", "FullyConnected", "MatMul",
                            "Pooling", "Eltwise", "Concatenation", "Subgraph", "Reduce",
                            "Interpolate", "MVN", "Softmax", "GatherElements"})
FLOAT_PRECISIONS = frozenset({"f32", "bf16", "f16"})


def _rt_text(rt, key: str) -> str:
    value = rt.get(key) if hasattr(rt, "get") else (rt[key] if key in rt else None)
    if value is None:
        return ""
    return value.astype(str) if hasattr(value, "astype") else str(value)


def runtime_layers(compiled) -> list:
    """How OpenVINO's CPU plugin runs each layer of a compiled model, in execution order:
    ``{"name", "type" (layerType), "precision" (runtimePrecision), "outputs"
    (outputPrecisions), "original" (the source ops fused into it)}`` from the runtime model's
    rt_info, after the plugin's fusions, so it says what really runs (the ONNX says what was
    asked for)."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        out.append({"name": op.get_friendly_name(),
                    "type": _rt_text(rt, "layerType") or op.get_type_name(),
                    "precision": _rt_text(rt, "runtimePrecision"),
                    "outputs": _rt_text(rt, "outputPrecisions"),
                    "original": _rt_text(rt, "originalLayersNames")})
    return out


def float_layers(compiled) -> list:
    """The compute layers of :func:`runtime_layers` that run in a float precision (f32, bf16,
    f16): a quantized file's float islands."""
    return [layer for layer in runtime_layers(compiled)
            if layer["type"] in COMPUTE_LAYERS and layer["precision"] in FLOAT_PRECISIONS]


# ----------------------------------------------------------------------------- hints
def hint_throughput(path, batch: int = 8, hints: Sequence[str] = ("latency", "throughput"),
                    threads: Optional[int] = None, precision: Optional[str] = None,
                    calls_per_request: int = 4, config: Optional[dict] = None) -> Dict[str, dict]:
    """Images/s of ``path`` at ``batch`` under each performance hint, as a server sees it:
    as many callers at once as the compiled model has infer requests (one per stream), each
    sending random ``batch``-image calls (:func:`engine.timing.concurrent_rate`).

    Returns ``{hint: {"images_per_s", "streams", "requests", "calls", "seconds"}}``;
    :func:`choose_hint` picks the better one. Hints are timed one after the other (one
    runtime at a time); a paired comparison of two files interleaves its own rounds."""
    from ..timing import concurrent_rate
    batch = count_option("batch", batch, allow_none=False)
    calls_per_request = count_option("calls_per_request", calls_per_request, allow_none=False)
    unknown = [h for h in hints if h not in _HINTS]
    if unknown or not hints:
        raise InputError(f"hints must be some of {', '.join(_HINTS)}, got {list(hints)!r}")
    results = {}
    for hint in hints:
        rt = OpenVINORuntime(path, precision=precision, threads=threads, hint=hint,
                             config=config)
        with rt:
            shape = rt.config.input_size if rt.config is not None else tuple(
                rt.inputs[0].shape[1:])
            if any(d is None for d in shape):
                raise InputError(f"{path}: the input size is unknown (no config, dynamic "
                                 "spatial dims); export it with its config")
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
            workers = rt.num_requests
            rate = concurrent_rate(lambda: rt(x), workers, calls_per_request * workers)
            results[hint] = {"images_per_s": rate["calls_per_s"] * batch,
                             "streams": int(rt.compiled.get_property("NUM_STREAMS")),
                             "requests": workers, "calls": rate["calls"],
                             "seconds": rate["seconds"]}
    return results


def choose_hint(measured: Dict[str, dict]) -> tuple:
    """``(hint, streams)`` of the faster entry of :func:`hint_throughput`'s result: what a
    server deploys (its instance count is the streams)."""
    if not measured:
        raise InputError("no hint was measured")
    hint = max(measured, key=lambda h: measured[h]["images_per_s"])
    return hint, measured[hint]["streams"]


def _request_pool(compiled) -> "queue.Queue":
    """A queue holding ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` infer requests of ``compiled``."""
    size = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    pool: queue.Queue = queue.Queue(maxsize=size)
    for _ in range(size):
        pool.put(compiled.create_infer_request())
    return pool


_OUTSIDE = re.compile(r"Path '(?P<loc>[^']*)' resolves to '(?P<file>[^']*)' which is outside "
                      r"the base directory '(?P<dir>[^']*)'")


def _openvino_reason(err: Exception) -> str:
    """OpenVINO's message without its source-location lines (``Exception from src/...``,
    ``Check 'x' failed at ...``), on one line."""
    lines = [ln.strip() for ln in str(err).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(("Exception from ", "Check '"))]
    return " ".join(kept) or f"{type(err).__name__}: {err}"


def _read_model(core, path: Path):
    """``core.read_model(path)``; any failure is an ArtifactError naming the file."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such model file; check the path")
    try:
        model = core.read_model(str(path))
        for port in (*model.inputs, *model.outputs):
            _spec(port)                      # names that Python cannot decode fail here
        return model
    except UnicodeDecodeError as e:
        raise ArtifactError(
            f"{path}: a tensor or node name in the model is not valid UTF-8 ({e}); the file "
            "is damaged or was not written by an ONNX exporter: re-export it with "
            "`inception-engine export`") from e
    except Exception as e:  # RuntimeError mostly, from OpenVINO's frontends
        outside = _OUTSIDE.search(str(e))
        if outside:
            raise ArtifactError(
                f"{path}: its external data {outside['loc']!r} resolves to {outside['file']}, "
                f"outside the model's folder {outside['dir']}, and OpenVINO only reads external "
                f"data from that folder or below; move {Path(outside['file']).name} into "
                f"{outside['dir']} and re-save the model with that location") from e
        raise ArtifactError(
            f"{path}: OpenVINO cannot read the model ({_openvino_reason(e)}). Check that the "
            "file is a complete ONNX or OpenVINO IR model (re-export it with `inception-engine "
            "export`), or load it with backend='onnxruntime'") from e


def _compile(core, model, device: str, props: dict, path):
    """``core.compile_model``; a failure is an ArtifactError naming the file."""
    try:
        return core.compile_model(model, device, props)
    except Exception as e:
        raise ArtifactError(
            f"{path}: OpenVINO cannot compile the model for {device} ({_openvino_reason(e)}). "
            "Check the properties passed in config=, or load the file with "
            "backend='onnxruntime'") from e


def _all_tensor_names(model) -> set:
    names = set()
    for op in model.get_ops():
        for o in op.outputs():
            names.update(o.get_names())
    return names
