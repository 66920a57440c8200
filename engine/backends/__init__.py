"""Engine backends: one module per engine, all behind :class:`engine.runtime.Runtime`.

The registry below maps a backend name to the module and class that implement it, the file
formats it runs, the libraries it needs and how to install them. Nothing heavy is imported
here: ``get_backend`` imports a backend's module on first use, and ``is_installed`` only asks
``importlib`` whether the libraries could be found.

Adding an engine is one entry in ``BACKENDS``. The class it names is constructed as::

    cls(path, precision=None, threads=None, **kw)   # precision None: the file's own

and its module may define ``is_available() -> (bool, reason)`` for checks beyond "the library
imports" (a GPU, a driver); ``engine.load`` consults it before auto-picking the backend.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..errors import BackendUnavailableError
from ..graphcheck import GraphSupport

# The ai.onnx opsets the ONNX engines read: from 13 (per-axis QuantizeLinear, which
# calibration writes, needs it) to 28, the newest that onnx 1.23 defines and onnxruntime 1.32 loads
# (OpenVINO 2026.4 runs the exported graphs at every opset in that range).
ONNX_OPSETS = (13, 28)

# What the triton engine's graph reader (engine/backends/triton/graph.py) folds into its
# layers; a test checks this against the reader.
TRITON_OPS = frozenset({
    "Constant", "Identity", "Conv", "Relu", "Mul", "Add", "Concat", "MaxPool", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Gemm", "MatMul",
    "BatchNormalization", "LpNormalization", "ReduceL2", "Clip", "Max", "Shape", "Expand",
    "Div", "QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str                      # import path of the implementing module
    cls: str                         # runtime class in that module
    formats: Tuple[str, ...]         # file suffixes it runs (".onnx", ".plan", ...)
    requires: Tuple[str, ...]        # top-level import names it needs
    install: str                     # how to get those libraries
    auto: Optional[int] = None       # rank when engine.load picks (lower first); None: only by name
    precisions: Tuple[str, ...] = ("fp32",)
    description: str = ""
    onnx: Optional[GraphSupport] = None  # what it reads from an ONNX graph; None: no ONNX
    # the INT8 study: where it runs ("cpu": every Q/DQ layout; "gpu": the signed one, studied
    # by default only where CUDA is usable), the float precisions it is studied at (those its
    # module's optional supports(precision) denies are left out; () : not an engine the study
    # runs ONNX files on), and its colour and marker on the study's plots
    device: str = "cpu"
    study: Tuple[str, ...] = ()
    colour: str = "k"
    marker: str = "x"
    # whether its predictions depend on the CPU's instruction set, so a study across CPU
    # classes measures its accuracy on each class (engine.study.ray_executor); False: the
    # same on every x86 CPU, measured once and shared
    accuracy_per_cpu_class: bool = False


BACKENDS: Dict[str, BackendInfo] = {b.name: b for b in [
    BackendInfo("tensorrt", "engine.backends.tensorrt", "TensorRTRuntime", (".plan", ".engine"),
                ("tensorrt",),
                "pip install --extra-index-url https://pypi.nvidia.com tensorrt "
                "(needs an NVIDIA GPU and driver), or use an NVIDIA TensorRT container; "
                "without TensorRT, engine.load(\"model.onnx\") runs the ONNX file on CPU",
                auto=0, precisions=("fp32", "fp16", "int8"),
                description="NVIDIA TensorRT >= 10, serialized plans",
                device="gpu", study=("fp16",), colour="tab:green", marker="^"),
    BackendInfo("triton", "engine.backends.triton", "TritonRuntime", (".onnx",), ("triton",),
                "pip install triton (ships with torch on Linux; needs an NVIDIA GPU, or "
                "TRITON_INTERPRET=1 for the slow CPU interpreter)",
                auto=None, precisions=("fp32", "fp16", "bf16", "int8"),
                description="this project's fused Triton kernels, run from the ONNX graph",
                onnx=GraphSupport(ONNX_OPSETS, TRITON_OPS),
                device="gpu", study=("fp16",), colour="tab:red", marker="D"),
    BackendInfo("openvino", "engine.backends.openvino", "OpenVINORuntime", (".onnx", ".xml"),
                ("openvino",), "pip install openvino",
                auto=10, precisions=("fp32", "bf16", "fp16", "int8"),
                description="Intel OpenVINO, the CPU default (BF16 where the CPU has it; "
                            "INT8 from Q/DQ ONNX)",
                onnx=GraphSupport(ONNX_OPSETS),
                study=("fp32", "bf16"), colour="tab:blue", marker="o",
                # its CPU plugin picks kernels by ISA: INT8 saturates at int16 on AVX2
                # (not with VNNI), an INT8 file's float layers run in bf16 where the CPU
                # has it, and bf16 runs only there
                accuracy_per_cpu_class=True),
    BackendInfo("onnxruntime", "engine.backends.onnxruntime", "ONNXRuntimeRuntime", (".onnx",),
                ("onnxruntime",),
                "pip install onnxruntime (or onnxruntime-gpu for the CUDA provider)",
                auto=20, precisions=("fp32", "int8"),
                description="ONNX Runtime, CPU execution provider (CUDA where available)",
                onnx=GraphSupport(ONNX_OPSETS, domains=frozenset({"com.microsoft"})),
                study=("fp32",), colour="tab:orange", marker="s"),
    BackendInfo("torch", "engine.backends.torch", "TorchRuntime", (".pt", ".pth", ".safetensors"),
                ("torch",), "pip install torch",
                auto=None, precisions=("fp32", "bf16", "fp16"),
                description="the PyTorch reference (eager); wraps an nn.Module or a checkpoint",
                colour="tab:gray", marker="*"),
]}


def names() -> List[str]:
    return list(BACKENDS)


def info(name: str) -> BackendInfo:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; valid backends are: "
                                  f"{', '.join(BACKENDS)}")
    return BACKENDS[name]


class UnknownBackendError(BackendUnavailableError, ValueError):
    """A backend name that is not in the registry."""


def is_installed(name: str) -> bool:
    """Whether the backend's module and libraries can be found (imports nothing heavy)."""
    b = info(name)
    try:
        if importlib.util.find_spec(b.module) is None:
            return False
        return all(importlib.util.find_spec(r) is not None for r in b.requires)
    except (ImportError, ValueError):
        return False


def check_available(name: str) -> Tuple[bool, str]:
    """``(usable, reason)``: installed, importable, and the module's ``is_available()`` agrees."""
    b = info(name)
    if not is_installed(name):
        return False, f"not installed ({b.install})"
    try:
        mod = importlib.import_module(b.module)
    except ImportError as e:
        return False, f"cannot be imported ({type(e).__name__}: {e}); {b.install}"
    probe = getattr(mod, "is_available", None)
    if probe is not None:
        ok, reason = _as_pair(probe())
        return ok, reason or ("available" if ok else "not usable on this machine")
    return True, "available"


def _as_pair(r):
    if isinstance(r, tuple):
        return bool(r[0]), str(r[1]) if len(r) > 1 else ""
    return bool(r), "" if r else "not usable on this machine"


def get_backend(name: str):
    """The runtime class of backend ``name``, importing its module now.

    Raises :class:`UnknownBackendError` for a name not in the registry and
    :class:`BackendUnavailableError` (with the install command) when its library is missing.
    """
    b = info(name)
    try:
        mod = importlib.import_module(b.module)
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        raise BackendUnavailableError(
            f"the {name} backend needs {', '.join(b.requires)}, which cannot be imported "
            f"({missing}); install it with: {b.install}") from e
    try:
        return getattr(mod, b.cls)
    except AttributeError as e:
        raise BackendUnavailableError(f"{b.module} defines no {b.cls}; the {name} backend is "
                                      "incomplete in this build") from e


def require(module_name: str, backend: str):
    """Import a backend's heavy library, or raise BackendUnavailableError with the pip command."""
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        b = BACKENDS.get(backend)
        hint = b.install if b else f"pip install {module_name}"
        raise BackendUnavailableError(f"the {backend} backend needs the {module_name} package, "
                                      f"which cannot be imported ({e}); install it with: {hint}") from e
