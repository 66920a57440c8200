"""OpenVINO runtime: the CPU default.

Precision is set explicitly through the inference-precision hint, because OpenVINO's own
default on CPUs with AMX or AVX512-BF16 is BF16 even for an FP32 model:

- ``fp32``: ``INFERENCE_PRECISION_HINT=f32``;
- ``bf16``: ``INFERENCE_PRECISION_HINT=bf16``, only where the CPU reports ``BF16`` in
  ``OPTIMIZATION_CAPABILITIES`` (AVX512-BF16 or AMX); elsewhere a clear error, since
  OpenVINO would silently run FP32;
- ``int8``: the file is a Q/DQ ONNX (its metadata says ``inception.precision=int8``, or it
  holds QuantizeLinear nodes); OpenVINO's low-precision transformations run the quantized
  convs in INT8, the rest in f32.

The model is compiled once, with a dynamic batch axis, so one compiled model serves any batch
size; ``static_batch=N`` reshapes it to a fixed batch first. Threads: ``INFERENCE_NUM_THREADS``;
performance hint ``LATENCY`` by default (``hint="throughput"`` for batched serving).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError
from ..onnxmeta import read_metadata, resolve_precision
from ..runtime import Runtime, TensorSpec
from . import require

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
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
        if hint not in _HINTS:
            raise ValueError(f"hint must be one of {', '.join(_HINTS)}, got {hint!r}")
        self.core = ov.Core()
        try:
            model = self.core.read_model(str(path))
        except RuntimeError as e:
            raise ArtifactError(f"{path}: OpenVINO cannot read the model ({e})") from e
        if static_batch is not None:
            shape = model.inputs[0].get_partial_shape()
            shape[0] = int(static_batch)
            model.reshape({model.inputs[0].get_any_name(): shape})
        self._model = model
        props = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision],
                 "PERFORMANCE_HINT": _HINTS[hint]}
        if threads:
            props["INFERENCE_NUM_THREADS"] = int(threads)
        if num_streams is not None:
            props["NUM_STREAMS"] = int(num_streams)
        if config:
            props.update(config)
        self.device = device
        self.threads = threads
        self.properties = props
        self.compiled = self.core.compile_model(model, device, props)
        self._request = self.compiled.create_infer_request()
        self._intermediate_compiled = None
        self._intermediate_names: tuple = ()
        super().__init__(path=path, precision=precision,
                         config=info["config"] if info else None,
                         inputs=[_spec(p) for p in self.compiled.inputs],
                         outputs=[_spec(p) for p in self.compiled.outputs],
                         check_finite=check_finite)
        self.metadata = info["props"] if info else {}

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self._request.infer({0: x})
        return self._request.get_output_tensor(0).data.copy()

    def intermediates(self, x, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Run ``x`` with ``names`` (ONNX tensor names) added as model outputs.

        The extended model is compiled once per set of names, with the same properties.
        """
        arr = self.check_input(x)
        names = tuple(names) if names is not None else tuple(
            n for n in _all_tensor_names(self._model) if n)
        if self._intermediate_compiled is None or names != self._intermediate_names:
            m = self._model.clone()
            known = _all_tensor_names(m)
            missing = [n for n in names if n not in known]
            if missing:
                raise KeyError(f"tensors not in the model: {', '.join(missing[:5])}")
            m.add_outputs(list(names))
            self._intermediate_compiled = self.core.compile_model(m, self.device, self.properties)
            self._intermediate_names = names
        res = self._intermediate_compiled.create_infer_request().infer({0: arr})
        out = {}
        for port, val in res.items():
            for n in port.get_names():
                if n in names:
                    out[n] = np.array(val, copy=True)
        return out

    def close(self):
        self._request = None
        self.compiled = None
        self._intermediate_compiled = None
        super().close()


def _all_tensor_names(model) -> set:
    names = set()
    for op in model.get_ops():
        for o in op.outputs():
            names.update(o.get_names())
    return names
