"""ONNX Runtime runtime: the portable engine (CPU execution provider; CUDA where available).

Precisions: ``fp32`` for an FP32 export, ``int8`` for a Q/DQ ONNX (the CPU provider runs
TensorRT-style Q/DQ slowly; that is reported, not tuned away). Threads:
``intra_op_num_threads``. Intermediate tensors for layer-wise parity come from a copy of the
graph with those tensors added as outputs, in a second session built on first use.

Many callers at once: ``InferenceSession.run`` is thread-safe, and a call here only reads the
runtime (input and output names, the session); the second session for intermediates is
built once, under the runtime's lock.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError, InputError
from ..onnxmeta import load_onnx, read_metadata, resolve_precision
from ..runtime import Runtime, TensorSpec, count_option, engine_failure
from . import require

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}
# optimization= names and ONNX Runtime's GraphOptimizationLevel members
_OPTIMIZATION = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
                 "basic": "ORT_ENABLE_BASIC", "none": "ORT_DISABLE_ALL"}


def is_available():
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return False, f"onnxruntime cannot be imported ({e}); pip install onnxruntime"
    return True, "available"


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _DTYPES.get(arg.type, arg.type))


class ONNXRuntimeRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, path, precision: Optional[str] = None, threads: Optional[int] = None,
                 providers: Optional[Sequence[str]] = None, device: str = "auto",
                 check_finite: bool = True, optimization: str = "all"):
        ort = require("onnxruntime", "onnxruntime")
        threads = count_option("threads", threads)
        if optimization not in _OPTIMIZATION:
            raise InputError(f"optimization must be one of {', '.join(_OPTIMIZATION)} (ONNX "
                             f"Runtime's graph optimization levels), got {optimization!r}")
        path = Path(path)
        info = read_metadata(path)
        precision = resolve_precision(precision, info["precision"], ("fp32", "int8"),
                                      self.backend, path)
        if providers is None:
            providers = _default_providers(ort, device)
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                _OPTIMIZATION[optimization])
        self._ort, self._opts, self.providers = ort, opts, list(providers)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=self.providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(f"{path}: ONNX Runtime cannot load the model "
                                f"({type(e).__name__}: {e})") from e
        self.threads = threads
        super().__init__(path=path, precision=precision, config=info["config"],
                         inputs=[_spec(a) for a in self.session.get_inputs()],
                         outputs=[_spec(a) for a in self.session.get_outputs()],
                         check_finite=check_finite)
        self.metadata = info["props"]
        self._in_name = self.inputs[0].name
        self._out_name = self.outputs[0].name

    @property
    def device(self) -> str:
        return "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def _infer(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self._out_name], {self._in_name: x})[0]
        except Exception as e:
            if not type(e).__module__.startswith("onnxruntime"):
                raise                      # ours or Python's: a bug shows its traceback
            raise engine_failure(self.backend, self.path, str(e).strip().splitlines()[0]) from e

    def intermediates(self, x, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        arr = self.check_input(x)
        key = tuple(names) if names is not None else None
        session, wanted = self._build_once("intermediates", key,
                                           lambda: self._session_with_outputs(key))
        outs = session.run(list(wanted), {self._in_name: arr})
        return dict(zip(wanted, outs))

    def _session_with_outputs(self, names: Optional[Sequence[str]]):
        """A second session on the graph with ``names`` (default: every node output) added as
        outputs; returns ``(session, names)``."""
        from onnx import helper
        proto = load_onnx(self.path)
        produced = [o for n in proto.graph.node for o in n.output if o]
        names = tuple(produced if names is None else names)
        missing = sorted(set(names) - set(produced))
        if missing:
            raise KeyError(f"tensors not in the model: {', '.join(missing[:5])}")
        have = {o.name for o in proto.graph.output}
        for n in names:
            if n not in have:
                proto.graph.output.append(helper.make_empty_tensor_value_info(n))
        session = self._ort.InferenceSession(proto.SerializeToString(), sess_options=self._opts,
                                             providers=self.providers)
        return session, names

    def close(self):
        self.session = None
        super().close()


def _default_providers(ort, device: str) -> list:
    """CUDA first where ``device`` allows it and onnxruntime has it, then the CPU provider."""
    avail = ort.get_available_providers()
    if device not in ("auto", "cuda", "cpu"):
        raise InputError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in avail:
        raise BackendUnavailableError(
            "onnxruntime has no CUDAExecutionProvider here (available: "
            f"{', '.join(avail)}); pip install onnxruntime-gpu on a CUDA machine")
    cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in avail
    return (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
