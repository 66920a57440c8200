"""The TensorRT plan runtime: a ``.plan`` behind :class:`engine.runtime.Runtime`.

Targets TensorRT 10.x and 11.x through the Python API they both document:
``Runtime.deserialize_cuda_engine``, tensors by name (``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``) and ``execute_async_v3`` on a CUDA stream.

Device buffers are torch CUDA tensors when torch has CUDA, otherwise raw allocations through
cuda-python (``cuda.bindings.runtime``). The base class validates every input; a CUDA tensor
then comes to :meth:`TensorRTRuntime._infer_device` and goes back as a CUDA tensor with no
host round trip, a host array comes to :meth:`TensorRTRuntime._infer`.

Threads: each thread that calls a runtime gets its own execution context and stream
(``threading.local``), so one loaded plan can serve several threads at once.
"""
from __future__ import annotations

import threading
import warnings
from typing import Optional

import numpy as np

from ...errors import ArtifactError, BackendUnavailableError, InputError
from ...runtime import Runtime, TensorSpec
from . import meta
from .probe import (cuda_check, cudart, gpu_info, import_tensorrt, make_logger,
                    running_environment, torch_cuda)

__all__ = ["TensorRTRuntime", "is_available"]


class _ThreadState:
    """One execution context, stream and set of buffers per thread."""

    def __init__(self):
        self.context = None
        self.stream = None           # torch.cuda.Stream, or a cudaStream_t (cuda-python)
        self.buffers = {}            # cuda-python: name -> (ptr, nbytes)
        self.graph = None            # (shape, CUDAGraph, static input, static outputs)


class TensorRTRuntime(Runtime):
    """A TensorRT plan behind the common runtime interface.

    check_env: compare the sidecar's TensorRT version and GPU with the running ones before
        deserializing (a mismatch is a :class:`~engine.backends.tensorrt.meta.PlanMismatchError`
        naming both and the rebuild command); ``False`` downgrades it to a warning.
    cuda_graph: capture the execution into a CUDA graph the first time a shape is seen and
        replay it while the shape stays the same (torch CUDA buffers only; for fixed-shape
        serving loops).
    device: CUDA device index; the runtime's ``device`` is ``"cuda:N"``, so the base class
        hands CUDA tensors to :meth:`_infer_device`.
    """

    backend = meta.BACKEND

    def __init__(self, path, precision: Optional[str] = None, threads: Optional[int] = None,
                 check_env: bool = True, cuda_graph: bool = False, device: int = 0,
                 check_finite: bool = True, verbose: bool = False):
        path = meta.check_plan_file(path)
        trt = import_tensorrt()
        sidecar = meta.read_sidecar(path)
        meta.check_plan_precision(sidecar, precision, path)
        if threads is not None:
            warnings.warn("the tensorrt backend ignores threads= (it runs on the GPU)",
                          stacklevel=2)
        if sidecar is not None:
            _check_sidecar(sidecar, path, device, check_env)
        self.sidecar = sidecar
        self.device = f"cuda:{device}"
        self._torch = torch_cuda()
        if self._torch is None:
            cuda_check(cudart().cudaSetDevice(device), "cudaSetDevice")
        self._logger = make_logger(trt, verbose)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._deserialize(trt, path)
        self._read_io(trt, path)
        self._batch_range = self._profile_batch_range()
        super().__init__(path=path, precision=sidecar["precision"] if sidecar else "fp32",
                         config=_sidecar_config(sidecar), inputs=[self._spec(self._in_names[0])],
                         outputs=[self._spec(n) for n in self._out_names],
                         check_finite=check_finite)
        self.cuda_graph = bool(cuda_graph) and self._torch is not None
        if cuda_graph and self._torch is None:
            warnings.warn("cuda_graph=True needs torch with CUDA (graphs are captured through "
                          "torch.cuda.CUDAGraph); running without graphs", stacklevel=2)
        self._local = threading.local()
        self._states = []

    # ------------------------------------------------------------------ loading
    def _deserialize(self, trt, path):
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            log = "; ".join(self._logger.errors[-3:])
            raise ArtifactError(
                f"{path}: TensorRT {trt.__version__} could not deserialize the plan ({log}). A "
                "plan only loads with the TensorRT version and on the GPU architecture it was "
                "built for; rebuild it here with `inception-engine build`")
        return engine

    def _read_io(self, trt, path) -> None:
        """The plan's input and output tensor names and their numpy dtypes."""
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._in_names = [n for n in names
                          if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out_names = [n for n in names if n not in self._in_names]
        if len(self._in_names) != 1:
            raise ArtifactError(f"{path}: expected one input tensor, the plan has "
                                f"{self._in_names}")
        self._dtypes = {n: _numpy_dtype(trt, engine.get_tensor_dtype(n), n, path) for n in names}

    def _profile_batch_range(self):
        """(min, max) batch of the plan's optimization profile."""
        if hasattr(self._engine, "get_tensor_profile_shape"):
            pmin, _, pmax = self._engine.get_tensor_profile_shape(self._in_names[0], 0)
            return int(pmin[0]), int(pmax[0])
        if self.sidecar is not None:
            opts = self.sidecar["build_options"]
            return int(opts["min_batch"]), int(opts["max_batch"])
        return 1, 1 << 30   # TensorRT's set_input_shape still checks

    def _spec(self, name) -> TensorSpec:
        shape = tuple(None if int(d) < 0 else int(d) for d in self._engine.get_tensor_shape(name))
        return TensorSpec(name, shape, "float32")

    # ------------------------------------------------------------------ per-thread state
    def _state(self) -> _ThreadState:
        st = getattr(self._local, "state", None)
        if st is None:
            if self.closed:
                raise RuntimeError(f"{self!r} is closed; load the model again")
            st = _ThreadState()
            with self._lock:
                st.context = self._engine.create_execution_context()
                if st.context is None:
                    raise BackendUnavailableError(
                        "TensorRT could not create an execution context (out of GPU memory?)")
                if self._torch is not None:
                    st.stream = self._torch.cuda.Stream(device=self.device)
                else:
                    st.stream = cuda_check(cudart().cudaStreamCreate(), "cudaStreamCreate")
                self._states.append(st)
            self._local.state = st
        return st

    def _check_batch(self, shape):
        lo, hi = self._batch_range
        if not lo <= shape[0] <= hi:
            cmd = ""
            if self.sidecar is not None:
                opts = dict(self.sidecar["build_options"], min_batch=min(lo, shape[0]),
                            max_batch=max(hi, shape[0]))
                opts["opt_batch"] = min(max(opts.get("opt_batch") or 1, opts["min_batch"]),
                                        opts["max_batch"])
                cmd = ": " + meta.rebuild_command(self.sidecar["source_onnx"].get("path"),
                                                  self.path, self.precision, opts)
            raise InputError(f"batch {shape[0]} is outside this plan's optimization profile "
                             f"({lo}..{hi}); split the batch, or rebuild with a wider range{cmd}")

    def _set_shapes(self, st, shape):
        ctx = st.context
        if not ctx.set_input_shape(self._in_names[0], tuple(int(d) for d in shape)):
            raise InputError(f"TensorRT rejected input shape {tuple(shape)} for "
                             f"{self.inputs[0].describe()}")
        return {n: tuple(int(d) for d in ctx.get_tensor_shape(n)) for n in self._out_names}

    @staticmethod
    def _execute(st, stream_handle, when: str = "") -> None:
        if not st.context.execute_async_v3(stream_handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed{when}; see the TensorRT log "
                               "above")

    # ------------------------------------------------------------------ torch CUDA path
    def _bind_torch(self, st, x_dev):
        """Set the input shape, allocate the outputs on ``x_dev``'s device and bind the
        addresses of ``x_dev`` and the outputs; returns the outputs by name."""
        torch = self._torch
        out_shapes = self._set_shapes(st, x_dev.shape)
        outs = {n: torch.empty(s, dtype=_torch_dtype(torch, self._dtypes[n]),
                               device=x_dev.device) for n, s in out_shapes.items()}
        st.context.set_tensor_address(self._in_names[0], x_dev.data_ptr())
        for n, t in outs.items():
            st.context.set_tensor_address(n, t.data_ptr())
        return outs

    def _run_torch(self, x_dev):
        """Run a contiguous CUDA tensor on our device; return its CUDA float32 outputs."""
        torch = self._torch
        st = self._state()
        x_dev = x_dev.to(_torch_dtype(torch, self._dtypes[self._in_names[0]]))
        caller = torch.cuda.current_stream(x_dev.device)
        st.stream.wait_stream(caller)
        if self.cuda_graph:
            outs = self._run_graph(st, x_dev)
        else:
            outs = self._bind_torch(st, x_dev)
            self._execute(st, st.stream.cuda_stream)
        x_dev.record_stream(st.stream)   # the caller's memory is read on our stream
        caller.wait_stream(st.stream)
        result = []
        for n in self._out_names:
            t = outs[n]
            # written on our stream, read on the caller's: keep the memory alive for both
            t.record_stream(st.stream)
            t.record_stream(caller)
            result.append(t.float() if t.dtype != torch.float32 else t)
        return result

    def _run_graph(self, st, x_dev):
        torch = self._torch
        shape = tuple(x_dev.shape)
        if st.graph is None or st.graph[0] != shape:
            st.graph = None
            static_in = torch.empty_like(x_dev)
            static_out = self._bind_torch(st, static_in)
            # one plain run first: TensorRT sets up shape-dependent state outside the capture
            self._execute(st, st.stream.cuda_stream, " before graph capture")
            st.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=st.stream):
                    st.context.execute_async_v3(st.stream.cuda_stream)
            except RuntimeError as e:
                raise RuntimeError(f"CUDA graph capture of {self.path} failed ({e}); load it "
                                   "with cuda_graph=False") from e
            st.graph = (shape, graph, static_in, static_out)
        _, graph, static_in, static_out = st.graph
        with torch.cuda.stream(st.stream):
            static_in.copy_(x_dev)
            graph.replay()
            outs = {n: t.clone() for n, t in static_out.items()}
        return outs

    # ------------------------------------------------------------------ cuda-python path
    def _run_cudart(self, arr: np.ndarray):
        runtime = cudart()
        st = self._state()
        in_name = self._in_names[0]
        arr = np.ascontiguousarray(arr, dtype=self._dtypes[in_name])
        out_shapes = self._set_shapes(st, arr.shape)
        host_out = {n: np.empty(s, dtype=self._dtypes[n]) for n, s in out_shapes.items()}
        stream = st.stream
        for n, a in [(in_name, arr), *host_out.items()]:
            ptr = self._cudart_buffer(st, n, a.nbytes)
            st.context.set_tensor_address(n, int(ptr))
        h2d = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(runtime.cudaMemcpyAsync(st.buffers[in_name][0], arr.ctypes.data, arr.nbytes,
                                           h2d, stream), "cudaMemcpyAsync")
        self._execute(st, int(stream))
        for n, a in host_out.items():
            cuda_check(runtime.cudaMemcpyAsync(a.ctypes.data, st.buffers[n][0], a.nbytes, d2h,
                                               stream), "cudaMemcpyAsync")
        cuda_check(runtime.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return [host_out[n].astype(np.float32, copy=False) for n in self._out_names]

    @staticmethod
    def _cudart_buffer(st, name, nbytes):
        have = st.buffers.get(name)
        if have is None or have[1] < nbytes:
            runtime = cudart()
            if have is not None:
                cuda_check(runtime.cudaFree(have[0]), "cudaFree")
            ptr = cuda_check(runtime.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            st.buffers[name] = (ptr, nbytes)
        return st.buffers[name][0]

    # ------------------------------------------------------------------ the contract
    def _infer(self, x: np.ndarray) -> np.ndarray:
        self._check_batch(x.shape)
        if self._torch is not None:
            outs = self._run_torch(self._torch.from_numpy(x).to(self.device))
            res = [o.cpu().numpy() for o in outs]
        else:
            res = self._run_cudart(x)
        return res[0] if len(res) == 1 else res

    def _infer_device(self, x):
        """A validated float32 CUDA tensor in, a CUDA tensor out on the same device."""
        self._check_batch(tuple(x.shape))
        ours = self._torch.device(self.device)
        outs = self._run_torch(x.to(ours).contiguous())
        if x.device != ours:
            outs = [o.to(x.device) for o in outs]
        return outs[0] if len(outs) == 1 else outs

    def close(self):
        if self.closed:
            return
        with self._lock:
            for st in self._states:
                if self._torch is None:
                    runtime = cudart()
                    for ptr, _ in st.buffers.values():
                        runtime.cudaFree(ptr)
                    if st.stream is not None:
                        runtime.cudaStreamDestroy(st.stream)
                st.graph = None
                st.context = None
            self._states.clear()
        self._engine = None
        super().close()


def _check_sidecar(sidecar: dict, path, device: int, check_env: bool) -> None:
    """The plan is the one its sidecar describes, and runs on this TensorRT and GPU."""
    from ...fileio import sha256_file
    meta.check_plan_hash(sidecar, sha256_file(path), path)
    env = running_environment(device)
    meta.check_compatibility(sidecar, env["tensorrt"], env["gpu"], path, strict=check_env)


def _sidecar_config(sidecar: Optional[dict]):
    """The model config the sidecar records, or ``None`` (a raw plan, a foreign ONNX)."""
    if sidecar is None or not sidecar.get("model_config"):
        return None
    from ...models.registry import ModelConfig
    return ModelConfig.from_dict(sidecar["model_config"])


def _numpy_dtype(trt, trt_dtype, name, path) -> np.dtype:
    """The numpy dtype of a plan tensor, or an :class:`ArtifactError` for a type numpy has no
    equivalent of (BF16, FP8, INT4, FP4: TensorRT's ``nptype`` refuses them)."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError as e:
        raise ArtifactError(f"{path}: tensor {name!r} is {getattr(trt_dtype, 'name', trt_dtype)}"
                            f", which has no numpy equivalent ({e}); build the plan with "
                            "float32 or float16 input and output (the default of "
                            "`inception-engine build`)") from e


def _torch_dtype(torch, np_dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int8): torch.int8, np.dtype(np.int32): torch.int32,
            np.dtype(np.int64): torch.int64, np.dtype(np.bool_): torch.bool}[np.dtype(np_dtype)]


def is_available():
    """``(usable, reason)`` for ``engine.load``: TensorRT imports and a CUDA GPU is visible."""
    try:
        import_tensorrt()
    except BackendUnavailableError as e:
        return False, str(e)
    try:
        gpu_info(0)
    except Exception as e:  # no driver, no device: cuda-python or torch say which
        return False, f"TensorRT is installed but no CUDA GPU is usable ({e})"
    return True, "available"
