"""What the TensorRT backend asks of the machine: the ``tensorrt`` module, CUDA access (torch
with CUDA, else cuda-python's runtime bindings), the GPU's name and compute capability, and a
TensorRT logger that keeps the errors a failure message quotes.

Nothing here is imported at module level beyond the standard library and ``kernels.env``,
so ``import engine.backends.tensorrt`` works on a machine without TensorRT or a GPU; each
function raises :class:`~engine.errors.BackendUnavailableError` with what to install.
"""
from __future__ import annotations

import sys
import warnings

from kernels.env import cuda_usable

from ...errors import BackendUnavailableError
from . import meta


def import_tensorrt():
    """The ``tensorrt`` module, or a BackendUnavailableError that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise meta.tensorrt_unavailable(f"import tensorrt failed: {e}") from e
    return trt


def torch_cuda():
    """The ``torch`` module when torch has a usable CUDA GPU, else ``None``."""
    if not cuda_usable():
        return None
    import torch
    return torch


def cudart():
    """cuda-python's CUDA runtime bindings (for buffers when torch has no CUDA)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6 layout
        except ImportError as e:
            raise BackendUnavailableError(
                "no CUDA buffers: torch has no CUDA here and cuda-python is not installed "
                "(`pip install cuda-python`)") from e
    return runtime


def cuda_check(ret, what: str):
    """cuda-python calls return ``(err, *values)``; raise on an error, return the values."""
    runtime = cudart()
    err, rest = ret[0], ret[1:]
    if err != runtime.cudaError_t.cudaSuccess:
        msg = runtime.cudaGetErrorString(err)[1]
        msg = msg.decode() if isinstance(msg, bytes) else str(msg)
        raise BackendUnavailableError(f"CUDA error in {what}: {msg} ({err})")
    return rest[0] if len(rest) == 1 else rest


def gpu_info(device: int = 0) -> dict:
    """``{"name", "compute_capability": "major.minor"}`` of the CUDA device, or a clear error."""
    torch = torch_cuda()
    if torch is not None:
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device),
                "compute_capability": f"{major}.{minor}"}
    runtime = cudart()
    props = cuda_check(runtime.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    name = name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}


def running_environment(device: int = 0) -> dict:
    """The running TensorRT version and GPU, as the sidecar records them."""
    trt = import_tensorrt()
    return {"tensorrt": trt.__version__, "gpu": gpu_info(device)}


def make_logger(trt, verbose: bool = False):
    """A TensorRT logger: errors are kept (failures quote them) and warned, warnings are
    warned, and with ``verbose`` every message goes to stderr."""
    sev = trt.ILogger.Severity
    failures = (sev.ERROR, sev.INTERNAL_ERROR)

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if severity in failures:
                self.errors.append(str(msg))
            if verbose:
                print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)
            elif severity in failures or severity == sev.WARNING:
                warnings.warn(f"TensorRT: {msg}", stacklevel=2)

    return Logger()
