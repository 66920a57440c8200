"""The runtime interface every engine implements (torch, onnxruntime, openvino, tensorrt, triton).

A runtime takes NCHW float32 images, as a numpy array or a torch tensor, and returns the
network output as the same kind (a torch tensor comes back on the input's device).

The contract, as in Polygraphy's runners: :meth:`Runtime.__call__` checks and converts, the
backend only runs. ``__call__`` validates the input against the declared spec (rank, shape,
dtype, NaN/Inf) on the tensor's own device, then hands it to one of two hooks:

- ``_infer(x: np.ndarray) -> np.ndarray``: host arrays, float32, C-contiguous. Every backend
  implements it.
- ``_infer_device(x: torch.Tensor) -> torch.Tensor``: a float32 contiguous tensor on a CUDA
  device in, a tensor on a CUDA device out, no host copy. Engines that run on a GPU implement
  it; it is used when the input is a CUDA tensor and the runtime's ``device`` is CUDA.

No backend overrides ``__call__``, so every engine gives the same errors for the same bad
input. Backends may also implement :meth:`Runtime.intermediates` for layer-wise parity.

Threads: one runtime may be called from many threads at once, and each call returns exactly
what it returns to a lone caller. Each engine gets there its own way, said in its docstring:
a pool of infer requests (OpenVINO), a session that is itself thread-safe (ONNX Runtime), a
module run under ``inference_mode`` (torch), one execution context per thread (TensorRT), one
lock around the shared arena and CUDA graphs (the triton engine). State a backend builds on
first use (a second session or compiled model for :meth:`Runtime.intermediates`) is built
once, under the runtime's lock (:meth:`Runtime._build_once`). :meth:`Runtime.close` is for
when no call is in flight; a call after it raises.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from .errors import InputError, UnsupportedGraphError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dynamic dimension) and numpy dtype name of one I/O tensor."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str = "float32"

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


Built = TypeVar("Built")


def count_option(name: str, value, minimum: int = 1, allow_none: bool = True) -> Optional[int]:
    """``value`` as an int of at least ``minimum`` (``None`` passes when ``allow_none``: the
    engine's default); anything else is an :class:`InputError` naming the option."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        default = " (or None for the engine's default)" if allow_none else ""
        raise InputError(f"{name} must be an integer >= {minimum}{default}, got {value!r}")
    return int(value)


def engine_failure(backend: str, path, reason: str):
    """An :class:`UnsupportedGraphError` for an engine that failed while running a graph that
    passed the checks made at load: names the engine, the file and the engine's reason, and
    says what to try next."""
    return UnsupportedGraphError(
        f"{backend} failed running {path}: {reason.rstrip('. ')}. The graph passed the checks "
        "made at load, so the engine cannot run it as written: re-export it with "
        "`inception-engine export`, "
        "or run it on another backend (engine.available_backends(path) lists them)")


def is_torch_tensor(x) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


class Runtime:
    """Base class. Use as a context manager or call :meth:`close`.

    Attributes: ``backend`` (engine name), ``precision`` (``fp32``/``fp16``/``bf16``/``int8``),
    ``config`` (a :class:`~engine.models.ModelConfig` read from the artifact, or ``None`` when
    the file carries no config), ``inputs``/``outputs`` (lists of :class:`TensorSpec`),
    ``path`` (the artifact it runs), ``check_finite`` (reject NaN/Inf inputs; default on).
    """

    backend: str = "base"

    def __init__(self, path=None, precision: str = "fp32", config=None,
                 inputs: Sequence[TensorSpec] = (), outputs: Sequence[TensorSpec] = (),
                 check_finite: bool = True):
        self.path = path
        self.precision = precision
        self.config = config
        self.inputs: List[TensorSpec] = list(inputs)
        self.outputs: List[TensorSpec] = list(outputs)
        self.check_finite = check_finite
        self.closed = False
        self._lock = threading.Lock()
        self._built: Dict[str, tuple] = {}

    # ------------------------------------------------------------------ contract
    def _infer(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def intermediates(self, x, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Run ``x`` and return named intermediate tensors (for layer-wise parity).

        Names are the engine's own tensor names; ``engine.verify`` matches them to PyTorch
        module names. Engines that cannot expose intermediates raise NotImplementedError.
        """
        raise NotImplementedError(f"the {self.backend} runtime cannot expose intermediate tensors")

    def close(self):
        self.closed = True
        self._built.clear()

    def _build_once(self, slot: str, key, build: Callable[[], Built]) -> Built:
        """What ``build()`` returns for ``key``, made under the runtime's lock the first time
        ``slot`` is asked for with that key (a new key replaces the slot's object). A caller
        keeps the object it got, so another thread replacing it does not disturb that call."""
        with self._lock:
            have = self._built.get(slot)
            if have is None or have[0] != key:
                have = self._built[slot] = (key, build())
            return have[1]

    # ------------------------------------------------------------------ common behaviour
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        name = self.config.name if self.config is not None else "unknown model"
        return f"<{type(self).__name__} {self.backend}/{self.precision} {name} {self.path}>"

    @property
    def runs_on_device(self) -> bool:
        """Whether CUDA tensors go to :meth:`_infer_device` (the backend implements it and
        this runtime's ``device`` is a CUDA device)."""
        return (type(self)._infer_device is not Runtime._infer_device
                and str(getattr(self, "device", "cpu")).startswith("cuda"))

    def _infer_device(self, x):  # pragma: no cover - optional hook
        raise NotImplementedError

    def validate(self, x):
        """Check ``x`` against the input spec; return it as float32 and contiguous, of the
        same kind: a numpy array, or a torch tensor on its own device (no host copy)."""
        if self.closed:
            raise RuntimeError(f"{self!r} is closed; load the model again")
        if is_torch_tensor(x):
            import torch
            if not torch.is_floating_point(x):
                raise InputError(f"input dtype {x.dtype} is not floating point; the engine takes "
                                 "float32 NCHW images normalised per the model config")
            src_dtype = str(x.dtype).replace("torch.", "")
        elif isinstance(x, np.ndarray):
            src_dtype = str(x.dtype)
        else:
            raise InputError(f"input must be a numpy array or torch tensor, got {type(x).__name__}")
        if src_dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise InputError(f"input dtype {src_dtype} is not supported; pass float32 NCHW images "
                             "(e.g. engine.preprocess(...) or x.astype(np.float32))")
        shape = tuple(x.shape)
        spec = self.inputs[0] if self.inputs else None
        if len(shape) != 4:
            want = spec.describe() if spec else "NCHW (4 dims)"
            raise InputError(f"input has shape {shape} ({len(shape)} dims); expected {want}. "
                             "Add a batch dimension with x[None] for a single image")
        if shape[0] < 1:
            raise InputError(f"input has shape {shape}: a batch of {shape[0]} images; pass at "
                             "least one image (batch >= 1)")
        if spec is not None:
            for axis, (got, want) in enumerate(zip(shape, spec.shape)):
                if want is not None and got != want:
                    raise InputError(f"input shape {shape} does not match {spec.describe()} "
                                     f"(axis {axis}: got {got}, expected {want})")
        if is_torch_tensor(x):
            import torch
            x = x.detach().to(torch.float32).contiguous()
            finite = self.check_finite and not bool(torch.isfinite(x).all())
            counts = (lambda: (int(torch.isnan(x).sum()), int(torch.isinf(x).sum())))
        else:
            x = np.ascontiguousarray(x, dtype=np.float32)
            finite = self.check_finite and not np.isfinite(x).all()
            counts = (lambda: (int(np.isnan(x).sum()), int(np.isinf(x).sum())))
        if finite:
            n_nan, n_inf = counts()
            raise InputError(f"input holds {n_nan} NaN and {n_inf} Inf values; fix the "
                             "preprocessing (or pass check_finite=False to run anyway)")
        return x

    def check_input(self, x) -> np.ndarray:
        """:meth:`validate`, then as a host array (for hooks that read host data)."""
        x = self.validate(x)
        return x.cpu().numpy() if is_torch_tensor(x) else x

    def __call__(self, x):
        x = self.validate(x)
        if not is_torch_tensor(x):
            return self._infer(x)
        if x.device.type == "cuda" and self.runs_on_device:
            return self._infer_device(x)
        import torch
        out = self._infer(x.cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)
