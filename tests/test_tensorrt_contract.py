"""The TensorRT code against the real Python API of TensorRT 10.13 and 11.4, without a GPU.

The ``tensorrt`` module here is a double generated from the real bindings' surface
(``tests/tensorrt_api.py``: the wheels from PyPI, imported over a stub of the nine C symbols
they need): every class, enum member, method, property and parameter list is the real
version's, and anything else is refused. The CUDA side (torch CUDA tensors and streams, or
cuda-python's runtime) is a small fake defined below.

These tests assert API use, not results: which calls the builder and the plan runtime make,
with which arguments, in which order, and that each one exists in that TensorRT version.
No engine is built or run; the plan bytes, tensor shapes and outputs are placeholders that
keep the code going. Engines and timings are only shown by ``test_tensorrt_gpu.py`` on a GPU.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import sys
import types
import warnings

import numpy as np
import pytest

import engine
from engine.backends.tensorrt import builder as builder_module
from engine.backends.tensorrt import meta, probe
from engine.backends.tensorrt import runtime as runtime_module
from engine.errors import InputError, UnsupportedPrecisionError
from helpers import temp_files, tiny_onnx
from tensorrt_api import WHEELS, Unavailable, dump_surface, make_double

VERSIONS = list(WHEELS)                  # "10.13", "11.4"
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
PLAN_BYTES = b"placeholder plan: no engine is built here"
SHAPE = (3, 75, 75)                      # the input of helpers.tiny_onnx
CLASSES = 10


@pytest.fixture(scope="session")
def surfaces():
    """label -> the dumped surface of that real TensorRT (skips when a wheel or gcc is
    missing: both are third-party)."""
    found = {}

    def get(label):
        if label not in found:
            try:
                found[label] = dump_surface(label)
            except Unavailable as e:
                pytest.skip(f"TensorRT {label} bindings unavailable: {e}")
        return found[label]
    return get


# --------------------------------------------------------------------------- the CUDA fakes
def _real_cudart():
    """cuda-python's real runtime bindings where they load here (the cuda-bindings wheel
    imports without a GPU), else None."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    return runtime


REAL_CUDART = _real_cudart()


class FakeCudart(types.ModuleType):
    """cuda-python's ``cuda.bindings.runtime``: calls return ``(err, *values)``.

    Where the real bindings load (:data:`REAL_CUDART`), every name the code asks for must
    exist there and every call must bind to the real function's signature, as the TensorRT
    double holds the code to TensorRT's API; the enums are the real ones.
    """

    def __init__(self, real=REAL_CUDART):
        super().__init__("cuda.bindings.runtime")
        self._real = real
        if real is not None:
            self.cudaError_t, self.cudaMemcpyKind = real.cudaError_t, real.cudaMemcpyKind
        else:
            self.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
            self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1,
                                                        cudaMemcpyDeviceToHost=2)
        self.calls = []
        self._next = 0x1000

    def __getattr__(self, name):
        if not name.startswith("cuda"):
            raise AttributeError(name)
        signature = None
        if self._real is not None:
            real_fn = getattr(self._real, name, None)
            if not callable(real_fn):
                raise AttributeError(f"cuda-python's runtime bindings have no function {name}")
            signature = inspect.signature(real_fn)
        ok = self.cudaError_t.cudaSuccess

        def call(*args, **kwargs):
            if signature is not None:
                signature.bind(*args, **kwargs)      # TypeError, as the real binding raises
            self.calls.append(name)
            if name == "cudaGetDeviceProperties":
                major, minor = GPU["compute_capability"].split(".")
                return ok, types.SimpleNamespace(name=GPU["name"].encode(), major=int(major),
                                                 minor=int(minor))
            if name in ("cudaMalloc", "cudaStreamCreate"):
                self._next += 0x1000
                return ok, self._next
            return (ok,)
        return call


class FakeTensor:
    """A torch CUDA tensor for the runtime's bookkeeping: numpy data, a device label."""

    def __init__(self, array, device="cpu"):
        self.array, self.device = np.asarray(array), device

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)

    def to(self, where):
        if isinstance(where, np.dtype):
            return FakeTensor(self.array.astype(where), self.device)
        return FakeTensor(self.array, str(where))

    def data_ptr(self):
        return int(self.array.ctypes.data)

    def contiguous(self):
        return self

    def record_stream(self, stream):
        pass

    def float(self):
        return self.to(np.dtype(np.float32))

    def clone(self):
        return FakeTensor(self.array.copy(), self.device)

    def copy_(self, other):
        self.array[...] = other.array

    def cpu(self):
        return FakeTensor(self.array, "cpu")

    def numpy(self):
        return self.array


class FakeStream:
    def __init__(self, device=None):
        self.cuda_stream = id(self)

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


def fake_torch(replays: list):
    """The part of ``torch`` the plan runtime's CUDA path uses; graph replays are counted."""
    class CUDAGraph:
        def replay(self):
            replays.append(1)

    cuda = types.SimpleNamespace(
        Stream=FakeStream, current_stream=lambda device=None: FakeStream(), CUDAGraph=CUDAGraph,
        graph=lambda graph, stream=None: contextlib.nullcontext(),
        stream=lambda s: contextlib.nullcontext(),
        get_device_capability=lambda d=0: tuple(int(v) for v in
                                                GPU["compute_capability"].split(".")),
        get_device_name=lambda d=0: GPU["name"])
    dtypes = {n: np.dtype(n) for n in ("float32", "float16", "int8", "int32", "int64")}
    return types.SimpleNamespace(
        cuda=cuda, device=str, bool=np.dtype(bool), **dtypes,
        empty=lambda shape, dtype, device: FakeTensor(np.zeros(shape, dtype), device),
        empty_like=lambda t: FakeTensor(np.zeros_like(t.array), t.device),
        from_numpy=lambda a: FakeTensor(a))


@pytest.fixture
def cuda(monkeypatch):
    """Install the CUDA fakes: ``cuda("cudart")`` (no torch CUDA: cuda-python buffers) or
    ``cuda("torch")``; returns ``(cudart, graph replays)``."""
    def use(kind):
        rt = FakeCudart()
        package = types.ModuleType("cuda.bindings")
        package.runtime = rt
        top = types.ModuleType("cuda")
        top.bindings = package
        for name, mod in (("cuda", top), ("cuda.bindings", package), ("cuda.bindings.runtime", rt)):
            monkeypatch.setitem(sys.modules, name, mod)
        replays = []
        torch = fake_torch(replays) if kind == "torch" else None
        monkeypatch.setattr(probe, "torch_cuda", lambda: torch)
        monkeypatch.setattr(runtime_module, "torch_cuda", lambda: torch)
        return rt, replays
    return use


def test_the_cudart_fake_is_held_to_the_real_bindings():
    if REAL_CUDART is None:
        pytest.skip("cuda-python's runtime bindings do not load here")
    rt = FakeCudart()
    with pytest.raises(AttributeError, match="no function cudaMallocManagedd"):
        rt.cudaMallocManagedd(16)
    with pytest.raises(TypeError):
        rt.cudaMemcpyAsync(0x1000, 0x2000, 64)          # kind and stream missing
    with pytest.raises(TypeError):
        rt.cudaStreamCreate(0)                          # takes no argument
    err, ptr = rt.cudaMalloc(16)
    assert err == REAL_CUDART.cudaError_t.cudaSuccess and ptr and rt.calls == ["cudaMalloc"]


# --------------------------------------------------------------------------- the double
def plan_answers(trt, out_dtype="FLOAT"):
    """What the double answers where the code needs content: a one-input, one-output plan
    with a 1..16 batch profile, and the build's placeholder bytes."""
    names = ["input", "logits"]
    dims = {"input": (-1, *SHAPE), "logits": (-1, CLASSES)}

    def set_input_shape(ctx, name, shape):
        ctx.__dict__["batch"] = shape[0]
        return True

    return {
        "Builder.build_serialized_network": lambda b, network, config: PLAN_BYTES,
        "ITimingCache.serialize": lambda cache: b"timing cache bytes",
        "EngineInspector.get_engine_information":
            lambda insp, fmt: json.dumps({"Layers": ["placeholder"], "format": repr(fmt)}),
        "ICudaEngine.num_io_tensors": lambda eng: len(names),
        "ICudaEngine.get_tensor_name": lambda eng, i: names[i],
        "ICudaEngine.get_tensor_mode": lambda eng, n: (trt.TensorIOMode.INPUT if n == "input"
                                                       else trt.TensorIOMode.OUTPUT),
        "ICudaEngine.get_tensor_dtype": lambda eng, n: getattr(
            trt.DataType, "FLOAT" if n == "input" else out_dtype),
        "ICudaEngine.get_tensor_shape": lambda eng, n: dims[n],
        "ICudaEngine.get_tensor_profile_shape": lambda eng, n, i: [(1, *SHAPE), (8, *SHAPE),
                                                                   (16, *SHAPE)],
        "IExecutionContext.set_input_shape": set_input_shape,
        "IExecutionContext.get_tensor_shape": lambda ctx, n: (ctx.__dict__["batch"], CLASSES),
    }


@pytest.fixture
def tensorrt(surfaces, monkeypatch):
    """``tensorrt(label, **answers)`` installs a fresh double of that version as the
    ``tensorrt`` module and returns it."""
    def use(label, out_dtype="FLOAT"):
        trt = make_double(surfaces(label))
        trt.answers.update(plan_answers(trt, out_dtype))
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt
    return use


def calls(trt, what):
    return [c.args for c in trt.names(what)]


def strongly_typed_bit(trt):
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


# --------------------------------------------------------------------------- the surfaces
def test_the_surfaces_are_the_real_versions(surfaces):
    """The dumped surfaces hold the differences the builder's feature detection relies on."""
    old, new = surfaces("10.13"), surfaces("11.4")
    assert old["version"] == "10.13.0.35" and new["version"] == "11.4.0.106"
    for flag in ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS"):
        assert flag in old["enums"]["BuilderFlag"] and flag not in new["enums"]["BuilderFlag"]
    assert "IInt8EntropyCalibrator2" in old["classes"]
    assert "IInt8EntropyCalibrator2" not in new["classes"]
    for surface in (old, new):
        assert "STRONGLY_TYPED" in surface["enums"]["NetworkDefinitionCreationFlag"]
        assert "execute_async_v3" in surface["classes"]["IExecutionContext"]["methods"]
        assert "execute_async_v2" not in surface["classes"]["IExecutionContext"]["methods"]


def test_the_double_refuses_what_the_real_api_lacks(tensorrt):
    trt = tensorrt("11.4")
    assert not hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "TF32")
    config = trt.IBuilderConfig._blank()
    with pytest.raises(TypeError, match="accepts none of its signatures"):
        config.set_flag(int(trt.BuilderFlag.TF32))          # an int where an enum goes
    with pytest.raises(TypeError, match="accepts none of its signatures"):
        config.set_timing_cache(config.create_timing_cache(b""))   # one argument short
    with pytest.raises(AttributeError, match="no attribute 'set_flags'"):
        config.set_flags(trt.BuilderFlag.TF32)
    with pytest.raises(AttributeError, match="read-only"):
        trt.ICudaEngine._blank().num_io_tensors = 3
    with pytest.raises(TypeError, match="cannot|accepts none"):
        trt.ICudaEngine()                                   # no Python constructor
    config.set_flag(trt.BuilderFlag.TF32)
    assert calls(trt, "IBuilderConfig.set_flag") == [(trt.BuilderFlag.TF32,)]


# --------------------------------------------------------------------------- the builder
def build_through(trt, tmp_path, precision, module=None, **kw):
    """Build ``tiny_onnx`` at ``precision`` with every trtexec-level option through the
    double; returns ``(plan, options used)``."""
    src = tiny_onnx(tmp_path / ("m.int8.onnx" if precision == "int8" else "m.onnx"),
                    qdq=precision == "int8")
    opts = dict(min_batch=1, opt_batch=8, max_batch=16, workspace=1 << 30,
                timing_cache=tmp_path / "timing.cache", hardware_compatible=True,
                builder_optimization_level=4, layer_info=tmp_path / "layers.json")
    opts.update(kw)
    build = (module or builder_module).build
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the FP16 conversion's notes
        plan = build(src, tmp_path / f"m.{precision}.plan", precision=precision, **opts)
    return plan, opts


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("label", VERSIONS)
def test_build_contract(label, precision, tensorrt, cuda, tmp_path):
    trt = tensorrt(label)
    cuda("cudart")
    plan, opts = build_through(trt, tmp_path, precision)
    strong = label.startswith("11")
    order = [c.what for c in trt.calls]
    for first, then in [("Builder.__init__", "Builder.create_network"),
                        ("Builder.create_network", "OnnxParser.__init__"),
                        ("OnnxParser.parse", "Builder.build_serialized_network"),
                        ("IOptimizationProfile.set_shape",
                         "IBuilderConfig.add_optimization_profile"),
                        ("IBuilderConfig.set_timing_cache", "Builder.build_serialized_network"),
                        ("Builder.build_serialized_network", "ITimingCache.serialize"),
                        ("Builder.build_serialized_network", "Runtime.deserialize_cuda_engine"),
                        ("ICudaEngine.create_engine_inspector",
                         "EngineInspector.get_engine_information")]:
        assert order.index(first) < order.index(then), (first, then)

    # feature detection: strongly typed on 11 (no precision flags exist), flags on 10
    assert calls(trt, "Builder.create_network") == [(strongly_typed_bit(trt) if strong else 0,)]
    want = [] if strong or precision == "fp32" else [getattr(trt.BuilderFlag, precision.upper())]
    assert [a[0] for a in calls(trt, "IBuilderConfig.set_flag")] == want
    cleared = [a[0] for a in calls(trt, "IBuilderConfig.clear_flag")]
    assert cleared == ([trt.BuilderFlag.TF32] if precision == "fp32" else [])
    assert set(trt.misses) <= ({"BuilderFlag.FP16", "BuilderFlag.INT8"} if strong else set())

    # the trtexec-level options, each as the API takes it
    shapes = [(1, *SHAPE), (8, *SHAPE), (16, *SHAPE)]
    assert calls(trt, "IOptimizationProfile.set_shape") == [("input", *shapes)]
    assert calls(trt, "IBuilderConfig.set_memory_pool_limit") == [
        (trt.MemoryPoolType.WORKSPACE, 1 << 30)]
    assert calls(trt, "set IBuilderConfig.builder_optimization_level") == [(4,)]
    assert calls(trt, "set IBuilderConfig.hardware_compatibility_level") == [
        (trt.HardwareCompatibilityLevel.AMPERE_PLUS,)]
    assert calls(trt, "set IBuilderConfig.profiling_verbosity") == [
        (trt.ProfilingVerbosity.DETAILED,)]
    assert calls(trt, "EngineInspector.get_engine_information") == [
        (trt.LayerInformationFormat.JSON,)]
    assert calls(trt, "IBuilderConfig.set_timing_cache")[0][1] is False
    assert (tmp_path / "timing.cache").read_bytes() == b"timing cache bytes"
    assert json.loads((tmp_path / "layers.json").read_text())["Layers"] == ["placeholder"]

    side = meta.read_sidecar(plan, required=True)
    assert side["tensorrt"]["version"] == trt.__version__
    assert side["tensorrt"]["strongly_typed"] is strong
    assert side["build_options"]["builder_optimization_level"] == 4
    assert temp_files(tmp_path) == []


def test_precision_constraints_on_10(tensorrt, cuda, tmp_path):
    """Mixed precision on TensorRT 10: the flag, and each named layer's ``precision``."""
    trt = tensorrt("10.13")
    cuda("cudart")
    layers = ["/global_pool/Pool", "/classif/Gemm"]
    trt.answers["INetworkDefinition.num_layers"] = lambda net: len(layers)

    def get_layer(net, i):
        layer = trt.ILayer._blank()
        layer.__dict__["_values"]["name"] = layers[i]
        return layer
    trt.answers["INetworkDefinition.get_layer"] = get_layer
    plan, _ = build_through(trt, tmp_path, "fp16", precision_constraints="obey",
                            layer_precisions="/classif/Gemm:fp32,*:fp16")
    assert [a[0] for a in calls(trt, "IBuilderConfig.set_flag")] == [
        trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS]
    assert calls(trt, "set ILayer.precision") == [(trt.DataType.HALF,), (trt.DataType.FLOAT,)]
    side = meta.read_sidecar(plan)
    assert side["build_options"]["layer_precisions"] == {"/global_pool/Pool": "fp16",
                                                         "/classif/Gemm": "fp32"}
    with pytest.raises(InputError, match="lacks.*'/nope'"):
        build_through(trt, tmp_path, "fp16", precision_constraints="prefer",
                      layer_precisions="/nope:fp32")


def test_precision_constraints_refused_on_11(tensorrt, cuda, tmp_path):
    trt = tensorrt("11.4")
    cuda("cudart")
    with pytest.raises(UnsupportedPrecisionError, match="strongly typed"):
        build_through(trt, tmp_path, "fp16", precision_constraints="obey",
                      layer_precisions="*:fp16")
    assert not trt.names("Builder.__init__")         # refused before anything was built
    assert not list(tmp_path.glob("*.plan*"))


# --------------------------------------------------------------------------- the runtime
@pytest.mark.parametrize("path", ["cudart", "torch", "cuda_graph"])
@pytest.mark.parametrize("label", VERSIONS)
def test_runtime_contract(label, path, tensorrt, cuda, tmp_path):
    trt = tensorrt(label, out_dtype="HALF")
    fake_rt, replays = cuda("cudart" if path == "cudart" else "torch")
    plan, _ = build_through(trt, tmp_path, "fp32")
    trt.calls.clear()
    trt.misses.clear()
    from engine.backends.tensorrt import TensorRTRuntime
    x = np.zeros((2, *SHAPE), np.float32)
    with TensorRTRuntime(plan, cuda_graph=path == "cuda_graph") as rt:
        first, second = rt(x), rt(x)
    order = [c.what for c in trt.calls if not c.what.startswith("ILogger")]
    assert order[:2] == ["Runtime.__init__", "Runtime.deserialize_cuda_engine"]
    assert calls(trt, "ICudaEngine.get_tensor_profile_shape") == [("input", 0)]
    assert calls(trt, "ICudaEngine.create_execution_context") == [()]   # one per thread
    assert calls(trt, "IExecutionContext.set_input_shape")[0] == ("input", (2, *SHAPE))
    bound = [a[0] for a in calls(trt, "IExecutionContext.set_tensor_address")]
    assert bound[:2] == ["input", "logits"]
    executes = len(calls(trt, "IExecutionContext.execute_async_v3"))
    if path == "cuda_graph":
        assert executes == 2 and len(replays) == 2    # a plain run, the capture; then replays
    else:
        assert executes == 2 and not replays
    if path == "cudart":
        assert fake_rt.calls.count("cudaMemcpyAsync") == 4 and "cudaMalloc" in fake_rt.calls
    # dtype mapping: the HALF output comes back as float32 of the plan's output shape
    assert [c.args[0] for c in trt.names("nptype")] == [trt.DataType.FLOAT, trt.DataType.HALF]
    assert first.dtype == np.float32 and first.shape == (2, CLASSES) == second.shape
    assert not trt.misses


def test_runtime_names_a_type_numpy_cannot_hold(tensorrt, cuda, tmp_path):
    from engine.errors import ArtifactError
    trt = tensorrt("11.4", out_dtype="BF16")
    cuda("cudart")
    plan, _ = build_through(trt, tmp_path, "fp32")
    from engine.backends.tensorrt import TensorRTRuntime
    with pytest.raises(ArtifactError, match="'logits'.*BF16"):
        TensorRTRuntime(plan)


# --------------------------------------------------------------------------- mutations
def mutant(module, old: str, new: str):
    """A copy of ``module`` with ``old`` replaced by ``new`` in its source (in the same
    package, so its relative imports resolve)."""
    source = inspect.getsource(module)
    assert source.count(old) >= 1, f"{old!r} is not in {module.__name__}"
    name = module.__name__ + "_mutant"
    spec = importlib.util.spec_from_loader(name, loader=None)
    copy = importlib.util.module_from_spec(spec)
    copy.__package__ = module.__package__
    exec(compile(source.replace(old, new, 1), f"<mutant of {module.__file__}>", "exec"),
         copy.__dict__)
    return copy


BUILDER_MUTATIONS = {
    "FP16 flag on every path": ('for name in mode["set_flags"]:',
                                'for name in mode["set_flags"] + ["FP16"]:'),
    "misspelt method": ("builder.create_optimization_profile()",
                        "builder.create_optimisation_profile()"),
    "argument missing": ("config.set_timing_cache(cache, False)", "config.set_timing_cache(cache)"),
    "int for an enum": ("config.clear_flag(getattr(trt.BuilderFlag, name))",
                        "config.clear_flag(int(getattr(trt.BuilderFlag, name)))"),
    "removed enum member": ("trt.MemoryPoolType.WORKSPACE", "trt.MemoryPoolType.WORKSPACE_SIZE"),
}


def test_unmutated_copy_passes(tensorrt, cuda, tmp_path):
    """The control: a copy of the builder with no change runs the contract on 11.4."""
    trt = tensorrt("11.4")
    cuda("cudart")
    copy = mutant(builder_module, "def build(", "def build(")
    plan, _ = build_through(trt, tmp_path, "fp32", module=copy)
    assert plan.exists()


@pytest.mark.parametrize("mutation", list(BUILDER_MUTATIONS))
def test_a_mutated_builder_fails_the_contract(mutation, tensorrt, cuda, tmp_path):
    trt = tensorrt("11.4")
    cuda("cudart")
    copy = mutant(builder_module, *BUILDER_MUTATIONS[mutation])
    with pytest.raises((AttributeError, TypeError), match="TensorRT 11.4.0.106"):
        build_through(trt, tmp_path, "fp32", module=copy)
    assert not list(tmp_path.glob("*.plan"))


def test_the_fp16_mutation_is_only_wrong_on_11(tensorrt, cuda, tmp_path):
    """TensorRT 10.13 has BuilderFlag.FP16, so the same copy builds there."""
    trt = tensorrt("10.13")
    cuda("cudart")
    copy = mutant(builder_module, *BUILDER_MUTATIONS["FP16 flag on every path"])
    plan, _ = build_through(trt, tmp_path, "fp32", module=copy)
    assert trt.BuilderFlag.FP16 in [a[0] for a in calls(trt, "IBuilderConfig.set_flag")]


@pytest.mark.parametrize("label", VERSIONS)
def test_a_mutated_runtime_fails_the_contract(label, tensorrt, cuda, tmp_path, monkeypatch):
    """``execute_async_v2`` (gone since TensorRT 10) in place of ``execute_async_v3``."""
    trt = tensorrt(label)
    cuda("cudart")
    plan, _ = build_through(trt, tmp_path, "fp32")
    copy = mutant(runtime_module, "st.context.execute_async_v3(stream_handle)",
                  "st.context.execute_async_v2(stream_handle)")
    monkeypatch.setattr(copy, "torch_cuda", lambda: None)
    with copy.TensorRTRuntime(plan) as rt:
        with pytest.raises(AttributeError, match="no attribute 'execute_async_v2'"):
            rt(np.zeros((1, *SHAPE), np.float32))


# --------------------------------------------------------------------------- engine.build, CLI
def test_engine_build_and_cli_take_the_options(tensorrt, cuda, tmp_path, capsys):
    from engine.cli import main
    trt = tensorrt("10.13")
    cuda("cudart")
    src = tiny_onnx(tmp_path / "m.onnx")
    assert main(["build", str(src), "--out", str(tmp_path / "c.plan"), "--precision", "fp16",
                 "--min-batch", "2", "--opt-batch", "4", "--max-batch", "8", "--workspace",
                 "512", "--builder-optimization-level", "0", "--hardware-compatible",
                 "--timing-cache", str(tmp_path / "t.cache"), "--layer-info",
                 str(tmp_path / "l.json")]) == 0
    assert calls(trt, "IBuilderConfig.set_memory_pool_limit")[0][1] == 512 << 20  # MiB
    assert calls(trt, "set IBuilderConfig.builder_optimization_level") == [(0,)]
    assert calls(trt, "IOptimizationProfile.set_shape")[0][1][0] == 2
    assert (tmp_path / "l.json").exists() and "layer information" in capsys.readouterr().out
    plan = engine.build(src, tmp_path / "e.plan", builder_optimization_level=5)
    assert meta.read_sidecar(plan)["build_options"]["builder_optimization_level"] == 5


@pytest.mark.parametrize("argv, message", [
    (["--builder-optimization-level", "6"], "outside [0, 5]"),
    (["--workspace", "0"], "is not a size"),
    (["--precision-constraints", "always"], "not one of obey, prefer"),
    (["--layer-precisions", "/classif/Gemm:fp64"], "PRECISION one of fp32, fp16, int8"),
])
def test_cli_rejects_bad_build_values(argv, message, capsys):
    from engine.cli import make_parser
    with pytest.raises(SystemExit):
        make_parser().parse_args(["build", "m.onnx", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kw, message", [
    (dict(builder_optimization_level=9), "from 0 .* to 5"),
    (dict(builder_optimization_level=True), "from 0 .* to 5"),
    (dict(workspace=0), "workspace must be an integer >= 1"),
    (dict(layer_precisions="*:fp16"), "add --precision-constraints"),
    (dict(precision_constraints="obey"), "needs layer precisions"),
    (dict(precision_constraints="strict", layer_precisions="*:fp16"), "one of obey, prefer"),
])
def test_engine_build_rejects_bad_values_before_tensorrt(kw, message, tmp_path):
    """Checked before TensorRT is imported: the same message on a machine without it."""
    with pytest.raises(InputError, match=message):
        engine.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.plan", **kw)


def test_bench_gives_a_plan_trtexecs_summary(tensorrt, cuda, tmp_path, capsys):
    """``inception-engine bench x.plan``: throughput, host latency and GPU compute time, in
    trtexec's words (the numbers time the double and the fakes: only the report is checked)."""
    from engine.cli import main
    trt = tensorrt("11.4")
    cuda("cudart")
    plan, _ = build_through(trt, tmp_path, "fp32")
    assert main(["bench", str(plan), "--batch", "2", "--iters", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "=== Performance summary (batch 2) ===" in out
    assert "Throughput:" in out and "qps" in out
    assert "Latency: min = " in out and "percentile(99%)" in out
    assert "GPU Compute Time: not measured (torch has no CUDA here" in out
    assert main(["bench", str(plan), "--batch", "4", "--iters", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["results"][0]
    assert report["batch"] == 4 and report["host_latency"]["n"] >= 3
    assert report["throughput_ips"] == pytest.approx(4 * report["throughput_qps"])
    assert calls(trt, "IExecutionContext.set_input_shape")[-1] == ("input", (4, *SHAPE))
