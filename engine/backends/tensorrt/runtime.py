"""TensorRT: build a plan from our ONNX (FP32, FP16, or INT8 as Q/DQ) and run it.

Targets TensorRT 10.x and 11.x through the Python API they both document: ``OnnxParser``,
``Builder.build_serialized_network``, ``Runtime.deserialize_cuda_engine``, tensors by name
(``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``) and
``execute_async_v3`` on a CUDA stream. Where the two differ the code asks the installed module
what it has (``hasattr``), never its version string:

- TensorRT 11 removed ``BuilderFlag.FP16``/``INT8`` and builds strongly typed networks: FP16
  comes from an FP16 graph (``fp16``), INT8 from the Q/DQ graph our calibration
  writes. TensorRT 10 gets the same graphs and, because it still has them, the flags.
- ``IParserError.node_name``/``node_operator`` exist from 10.x on; otherwise the node index is
  looked up in the ONNX file, so a parser error always names the node.

Everything that needs no TensorRT (sidecar, compatibility checks, profile shapes, the FP16
conversion) lives in ``tensorrt_meta``/``fp16`` and is tested without a GPU. This
module is the thin part; CI does not run it against a real TensorRT.

Device buffers are torch CUDA tensors when torch has CUDA, otherwise raw allocations through
cuda-python (``cuda.bindings.runtime``). A torch CUDA tensor in gives a CUDA tensor out with no
host round trip; numpy or CPU tensors in give the same kind out.

Threads: each thread that calls a runtime gets its own execution context and stream
(``threading.local``), so one loaded plan can serve several threads at once.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import ArtifactError, InputError, UnsupportedGraphError
from ...runtime import Runtime, TensorSpec, is_torch_tensor
from . import meta

__all__ = ["build", "load", "TensorRTRuntime", "available", "is_available",
           "running_environment"]

GIB = 1 << 30


# --------------------------------------------------------------------------- environment
def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise meta.tensorrt_unavailable(f"import tensorrt failed: {e}") from e
    return trt


def available() -> bool:
    """True when ``import tensorrt`` works (a GPU is checked when a plan is built or run)."""
    try:
        _import_trt()
        return True
    except Exception:
        return False


def _torch_cuda():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as e:
            raise meta.BackendUnavailableError(
                "no CUDA buffers: torch has no CUDA here and cuda-python is not installed "
                "(`pip install cuda-python`)") from e
    return cudart


def _cuda_check(ret, what: str):
    """cuda-python calls return ``(err, *values)``; raise on an error, return the values."""
    cudart = _cudart()
    err, rest = ret[0], ret[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        msg = cudart.cudaGetErrorString(err)[1]
        msg = msg.decode() if isinstance(msg, bytes) else str(msg)
        raise meta.BackendUnavailableError(f"CUDA error in {what}: {msg} ({err})")
    return rest[0] if len(rest) == 1 else rest


def gpu_info(device: int = 0) -> dict:
    """``{"name", "compute_capability": "major.minor"}`` of the CUDA device, or a clear error."""
    torch = _torch_cuda()
    if torch is not None:
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device),
                "compute_capability": f"{major}.{minor}"}
    cudart = _cudart()
    props = _cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    name = name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}


def running_environment(device: int = 0) -> dict:
    """The running TensorRT version and GPU, as the sidecar records them."""
    trt = _import_trt()
    return {"tensorrt": trt.__version__, "gpu": gpu_info(device)}


def _make_logger(trt, verbose: bool = False):
    """A TensorRT logger: errors are kept (failures quote them) and warned, warnings are
    warned, and with ``verbose`` every message goes to stderr."""
    import sys
    sev = trt.ILogger.Severity

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if severity in (sev.ERROR, sev.INTERNAL_ERROR):
                self.errors.append(str(msg))
            if verbose:
                print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)
            elif severity in (sev.ERROR, sev.INTERNAL_ERROR, sev.WARNING):
                warnings.warn(f"TensorRT: {msg}", stacklevel=2)

    return Logger()


# --------------------------------------------------------------------------- build
def _parser_errors(parser, proto) -> str:
    """One line per parser error, each naming the ONNX node (name, operator, index)."""
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        idx = e.node() if hasattr(e, "node") else -1
        name = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        if (not name or not op) and 0 <= idx < len(proto.graph.node):
            n = proto.graph.node[idx]
            name, op = name or n.name, op or n.op_type
        where = f"node {name!r} ({op or 'unknown op'}, #{idx})" if (name or idx >= 0) \
            else "the graph"
        code = e.code() if hasattr(e, "code") else "?"
        lines.append(f"  {where}: {e.desc()} [{code}]")
    return "\n".join(lines)


def _prepare_onnx(onnx_path, precision: Optional[str], keep_io_fp32: bool):
    """Read the ONNX file and decide what TensorRT parses: ``(proto_to_parse, precision,
    source_meta)``. FP16 converts the graph; INT8 requires Q/DQ nodes."""
    from ...onnxmeta import load_onnx, onnx_io, read_metadata
    proto = load_onnx(onnx_path)
    src_meta = read_metadata(proto)
    qdq = meta.qdq_nodes(proto)
    precision = meta.resolve_precision(precision, bool(qdq), src_meta["precision"], onnx_path)
    if precision == "int8":
        bad = meta.nonzero_zero_points(proto)
        if bad:
            raise UnsupportedGraphError(
                f"{onnx_path}: {len(bad)} Q/DQ nodes have non-zero zero points (first: {bad[0]}); "
                "TensorRT takes symmetric INT8 only. Quantize with `inception-engine quantize`, "
                "which writes zero points of 0")
    if precision == "fp16" and src_meta["precision"] != "fp16":
        from .fp16 import convert_to_fp16
        proto, stats = convert_to_fp16(proto, keep_io_fp32=keep_io_fp32)
        if stats["clipped"]:
            warnings.warn(f"{stats['clipped']} weight values exceed the float16 range and were "
                          "clipped to +-65504", stacklevel=3)
    return proto, precision, src_meta


def build(onnx, plan=None, precision: Optional[str] = None, min_batch: int = 1,
          opt_batch: int = 8, max_batch: int = 32, workspace: Optional[int] = None,
          timing_cache=None, hardware_compatible: bool = False, keep_io_fp32: bool = True,
          device: int = 0, verbose: bool = False) -> Path:
    """Build a TensorRT plan from an ONNX file; write ``plan`` and ``plan.json`` atomically.

    onnx: our FP32 export, or the Q/DQ file from ``calibration.quantize``.
    plan: output path (default: the ONNX path with ``.plan``).
    precision: ``"fp32"``, ``"fp16"`` (the graph is converted to FP16 first; with
        ``keep_io_fp32`` its input and output stay float32) or ``"int8"`` (the file must hold
        Q/DQ nodes). ``None``: the file's own (``int8`` for a Q/DQ file, else ``fp32``).
    min_batch/opt_batch/max_batch: the optimization profile of the dynamic batch axis.
    workspace: builder workspace limit in bytes (``None``: TensorRT's default).
    timing_cache: path of a timing cache, read if it exists and written back (atomically).
    hardware_compatible: build for every GPU from Ampere on (slower kernels).
    Returns the plan path. Raises BackendUnavailableError when TensorRT is missing.
    """
    from ...fileio import atomic_write_bytes, sha256_file
    onnx = Path(onnx)
    plan = Path(plan) if plan is not None else onnx.with_suffix(".plan")
    proto, precision, src_meta = _prepare_onnx(onnx, precision, keep_io_fp32)  # file errors first
    trt = _import_trt()
    io = onnx_io(proto)
    if len(io["inputs"]) != 1:
        raise UnsupportedGraphError(f"{onnx}: expected one image input, found "
                                    f"{[i['name'] for i in io['inputs']]}")
    inp = io["inputs"][0]
    shapes = meta.profile_shapes(inp["shape"], min_batch, opt_batch, max_batch, inp["name"])
    options = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
               "workspace": workspace, "hardware_compatible": bool(hardware_compatible),
               "keep_io_fp32": bool(keep_io_fp32),
               "timing_cache": str(timing_cache) if timing_cache else None}
    mode = meta.build_mode(precision, [n for n in ("FP16", "INT8", "TF32")
                                       if hasattr(trt.BuilderFlag, n)],
                           hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    gpu = gpu_info(device)

    logger = _make_logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 0
    if mode["strongly_typed"] and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(proto.SerializeToString(), str(onnx.resolve())):
        raise UnsupportedGraphError(f"TensorRT {trt.__version__} could not parse {onnx}:\n"
                                    + _parser_errors(parser, proto))

    config = builder.create_builder_config()
    for name in mode["set_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in mode["clear_flags"]:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if hardware_compatible:
        if not hasattr(trt, "HardwareCompatibilityLevel"):
            raise meta.BackendUnavailableError("this TensorRT cannot build hardware-compatible "
                                               "plans (no HardwareCompatibilityLevel)")
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    profile.set_shape(inp["name"], *shapes)
    config.add_optimization_profile(profile)

    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).exists() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, False):
            warnings.warn(f"timing cache {timing_cache} was written by another TensorRT version "
                          "or GPU; starting a new one (it is replaced after the build)",
                          stacklevel=2)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "\n".join(f"  {m}" for m in logger.errors[-10:]) or "  (no error logged)"
        raise UnsupportedGraphError(f"TensorRT {trt.__version__} failed to build {onnx} "
                                    f"({precision}) on {meta.describe_gpu(gpu)}:\n{detail}")
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))

    onnx_sha = sha256_file(onnx)

    def sidecar(plan_sha, plan_bytes):
        return meta.make_sidecar(
            plan_path=plan, plan_sha256=plan_sha, plan_bytes=plan_bytes, onnx_path=onnx,
            onnx_sha256=onnx_sha, onnx_meta=src_meta, precision=precision, io=io,
            tensorrt_version=trt.__version__, gpu=gpu, build_options=options, mode=mode)

    meta.write_plan_and_sidecar(plan, serialized, sidecar)
    return plan


# --------------------------------------------------------------------------- runtime
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
    device: CUDA device index.
    """

    backend = "tensorrt"

    def __init__(self, path, precision: Optional[str] = None, threads: Optional[int] = None,
                 check_env: bool = True, cuda_graph: bool = False, device: int = 0,
                 check_finite: bool = True, verbose: bool = False):
        from ...fileio import sha256_file
        path = meta.check_plan_file(path)
        trt = _import_trt()
        self._trt = trt
        sidecar = meta.read_sidecar(path)
        if precision is not None and sidecar is not None and precision != sidecar["precision"]:
            hint = (" from the Q/DQ file of `inception-engine quantize`" if precision == "int8"
                    else f" from its source ONNX ({sidecar['source_onnx'].get('path')})")
            raise ValueError(
                f"{path} is a {sidecar['precision']} plan; a plan's precision is fixed when it "
                f"is built. Build a {precision} plan with `inception-engine build "
                f"--precision {precision}`{hint}, or load it with precision=None")
        if threads is not None:
            warnings.warn("the tensorrt backend ignores threads= (it runs on the GPU)",
                          stacklevel=2)
        if sidecar is not None:
            meta.check_plan_hash(sidecar, sha256_file(path), path)
            env = {"tensorrt": trt.__version__, "gpu": gpu_info(device)}
            meta.check_compatibility(sidecar, env["tensorrt"], env["gpu"], path, strict=check_env)
        self.sidecar = sidecar
        self.device = device
        self._torch = _torch_cuda()
        if self._torch is None:
            _cuda_check(_cudart().cudaSetDevice(device), "cudaSetDevice")
        self._logger = _make_logger(trt, verbose)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            log = "; ".join(self._logger.errors[-3:])
            raise ArtifactError(
                f"{path}: TensorRT {trt.__version__} could not deserialize the plan ({log}). A "
                "plan only loads with the TensorRT version and on the GPU architecture it was "
                "built for; rebuild it here with `inception-engine build`")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._in_names = [n for n in names
                          if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out_names = [n for n in names if n not in self._in_names]
        if len(self._in_names) != 1:
            raise ArtifactError(f"{path}: expected one input tensor, the plan has "
                                f"{self._in_names}")
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        in_name = self._in_names[0]
        if hasattr(engine, "get_tensor_profile_shape"):
            pmin, _, pmax = engine.get_tensor_profile_shape(in_name, 0)
            self._batch_range = (int(pmin[0]), int(pmax[0]))
        elif sidecar is not None:
            opts = sidecar["build_options"]
            self._batch_range = (int(opts["min_batch"]), int(opts["max_batch"]))
        else:
            self._batch_range = (1, 1 << 30)   # TensorRT's set_input_shape still checks

        def spec(n):
            shape = tuple(None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(n))
            return TensorSpec(n, shape, "float32")

        config, precision = None, "fp32"
        if sidecar is not None:
            precision = sidecar["precision"]
            if sidecar.get("model_config"):
                from ...models.registry import ModelConfig
                config = ModelConfig.from_dict(sidecar["model_config"])
        super().__init__(path=path, precision=precision, config=config,
                         inputs=[spec(in_name)], outputs=[spec(n) for n in self._out_names],
                         check_finite=check_finite)
        self.cuda_graph = bool(cuda_graph) and self._torch is not None
        if cuda_graph and self._torch is None:
            warnings.warn("cuda_graph=True needs torch with CUDA (graphs are captured through "
                          "torch.cuda.CUDAGraph); running without graphs", stacklevel=2)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._states = []

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
                    raise meta.BackendUnavailableError(
                        "TensorRT could not create an execution context (out of GPU memory?)")
                if self._torch is not None:
                    st.stream = self._torch.cuda.Stream(device=self.device)
                else:
                    st.stream = _cuda_check(_cudart().cudaStreamCreate(), "cudaStreamCreate")
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

    # ------------------------------------------------------------------ torch CUDA path
    def _run_torch(self, x_dev):
        """Run a contiguous CUDA tensor (float32, on our device); return CUDA float32 outputs."""
        torch = self._torch
        st = self._state()
        in_name = self._in_names[0]
        x_dev = x_dev.to(_torch_dtype(torch, self._dtypes[in_name]))
        caller = torch.cuda.current_stream(x_dev.device)
        st.stream.wait_stream(caller)
        if self.cuda_graph:
            outs = self._run_graph(st, x_dev)
        else:
            out_shapes = self._set_shapes(st, x_dev.shape)
            outs = {n: torch.empty(s, dtype=_torch_dtype(torch, self._dtypes[n]),
                                   device=x_dev.device) for n, s in out_shapes.items()}
            st.context.set_tensor_address(in_name, x_dev.data_ptr())
            for n, t in outs.items():
                st.context.set_tensor_address(n, t.data_ptr())
            if not st.context.execute_async_v3(st.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
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
        in_name = self._in_names[0]
        shape = tuple(x_dev.shape)
        if st.graph is None or st.graph[0] != shape:
            st.graph = None
            static_in = torch.empty_like(x_dev)
            out_shapes = self._set_shapes(st, shape)
            static_out = {n: torch.empty(s, dtype=_torch_dtype(torch, self._dtypes[n]),
                                         device=x_dev.device) for n, s in out_shapes.items()}
            st.context.set_tensor_address(in_name, static_in.data_ptr())
            for n, t in static_out.items():
                st.context.set_tensor_address(n, t.data_ptr())
            # one plain run first: TensorRT sets up shape-dependent state outside the capture
            if not st.context.execute_async_v3(st.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed before graph capture")
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
        cudart = _cudart()
        st = self._state()
        in_name = self._in_names[0]
        arr = np.ascontiguousarray(arr, dtype=self._dtypes[in_name])
        out_shapes = self._set_shapes(st, arr.shape)
        host_out = {n: np.empty(s, dtype=self._dtypes[n]) for n, s in out_shapes.items()}
        stream = st.stream
        for n, a in [(in_name, arr), *host_out.items()]:
            ptr = self._cudart_buffer(st, n, a.nbytes)
            st.context.set_tensor_address(n, int(ptr))
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_check(cudart.cudaMemcpyAsync(st.buffers[in_name][0], arr.ctypes.data, arr.nbytes,
                                           h2d, stream), "cudaMemcpyAsync")
        if not st.context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        for n, a in host_out.items():
            _cuda_check(cudart.cudaMemcpyAsync(a.ctypes.data, st.buffers[n][0], a.nbytes, d2h,
                                               stream), "cudaMemcpyAsync")
        _cuda_check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return [host_out[n].astype(np.float32, copy=False) for n in self._out_names]

    @staticmethod
    def _cudart_buffer(st, name, nbytes):
        have = st.buffers.get(name)
        if have is None or have[1] < nbytes:
            cudart = _cudart()
            if have is not None:
                _cuda_check(cudart.cudaFree(have[0]), "cudaFree")
            ptr = _cuda_check(cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            st.buffers[name] = (ptr, nbytes)
        return st.buffers[name][0]

    # ------------------------------------------------------------------ the interface
    def _infer(self, x: np.ndarray) -> np.ndarray:
        self._check_batch(x.shape)
        if self._torch is not None:
            torch = self._torch
            x_dev = torch.from_numpy(x).to(f"cuda:{self.device}")
            outs = self._run_torch(x_dev)
            res = [o.cpu().numpy() for o in outs]
        else:
            res = self._run_cudart(x)
        return res[0] if len(res) == 1 else res

    def __call__(self, x):
        if is_torch_tensor(x) and x.is_cuda:
            return self._call_cuda(x)
        return super().__call__(x)

    def _call_cuda(self, x):
        """A CUDA tensor in, a CUDA tensor out on the same device; no host copies."""
        torch = self._torch
        if self.closed:
            raise RuntimeError(f"{self!r} is closed; load the model again")
        if torch is None:  # pragma: no cover - a CUDA tensor implies torch CUDA
            raise InputError("got a CUDA tensor, but torch reports no CUDA")
        if not torch.is_floating_point(x):
            raise InputError(f"input dtype {x.dtype} is not floating point; the engine takes "
                             "float32 NCHW images normalised per the model config")
        spec = self.inputs[0]
        if x.dim() != 4:
            raise InputError(f"input has shape {tuple(x.shape)} ({x.dim()} dims); expected "
                             f"{spec.describe()}. Add a batch dimension with x[None] for a "
                             "single image")
        for axis, (got, want) in enumerate(zip(x.shape, spec.shape)):
            if want is not None and got != want:
                raise InputError(f"input shape {tuple(x.shape)} does not match "
                                 f"{spec.describe()} (axis {axis}: got {got}, expected {want})")
        if self.check_finite and not bool(torch.isfinite(x).all()):
            n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            raise InputError(f"input holds {n_nan} NaN and {n_inf} Inf values; fix the "
                             "preprocessing (or pass check_finite=False to run anyway)")
        self._check_batch(tuple(x.shape))
        ours = torch.device("cuda", self.device)
        x_dev = x.detach().to(ours).contiguous()
        outs = self._run_torch(x_dev)
        if x.device != ours:
            outs = [o.to(x.device) for o in outs]
        return outs[0] if len(outs) == 1 else outs

    def close(self):
        if self.closed:
            return
        with self._lock:
            for st in self._states:
                if self._torch is None:
                    cudart = _cudart()
                    for ptr, _ in st.buffers.values():
                        cudart.cudaFree(ptr)
                    if st.stream is not None:
                        cudart.cudaStreamDestroy(st.stream)
                st.graph = None
                st.context = None
            self._states.clear()
        self._engine = None
        super().close()


def _torch_dtype(torch, np_dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int8): torch.int8, np.dtype(np.int32): torch.int32,
            np.dtype(np.int64): torch.int64, np.dtype(np.bool_): torch.bool}[np.dtype(np_dtype)]


def is_available():
    """``(usable, reason)`` for ``engine.load``: TensorRT imports and a CUDA GPU is visible."""
    try:
        _import_trt()
    except meta.BackendUnavailableError as e:
        return False, str(e)
    try:
        gpu_info(0)
    except Exception as e:  # no driver, no device: cuda-python or torch say which
        return False, f"TensorRT is installed but no CUDA GPU is usable ({e})"
    return True, "available"


def load(path, precision: Optional[str] = None, threads: Optional[int] = None,
         **kwargs) -> TensorRTRuntime:
    """``engine.load(path, backend="tensorrt")``: a :class:`TensorRTRuntime` for a ``.plan``
    (keywords: ``check_env``, ``cuda_graph``, ``device``, ``check_finite``)."""
    return TensorRTRuntime(path, precision=precision, threads=threads, **kwargs)
