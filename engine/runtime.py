"""The runtime interface every engine implements (torch, onnxruntime, openvino, tensorrt, triton).

A runtime takes NCHW float32 images, as a numpy array or a torch tensor, and returns the
network output as the same kind (a torch tensor comes back on the input's device). The
base class checks the input against the declared spec before the backend sees it, so every
engine gives the same clear errors for a wrong rank, shape, dtype or NaN/Inf values.

Subclasses implement ``_infer(x: np.ndarray) -> np.ndarray`` (or ``_infer_torch`` for
engines that work on device tensors) and may implement ``intermediates`` for layer-wise
parity checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dynamic dimension) and numpy dtype name of one I/O tensor."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str = "float32"

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def _is_torch(x) -> bool:
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

    # ------------------------------------------------------------------ common behaviour
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        name = self.config.name if self.config is not None else "unknown model"
        return f"<{type(self).__name__} {self.backend}/{self.precision} {name} {self.path}>"

    def check_input(self, x) -> np.ndarray:
        """Validate ``x`` against the input spec; return it as a C-contiguous float32 array."""
        if self.closed:
            raise RuntimeError(f"{self!r} is closed; load the model again")
        if _is_torch(x):
            import torch
            if not torch.is_floating_point(x):
                raise InputError(f"input dtype {x.dtype} is not floating point; the engine takes "
                                 "float32 NCHW images normalised per the model config")
            arr = x.detach().to("cpu", dtype=torch.float32).numpy()
            src_dtype = str(x.dtype).replace("torch.", "")
        elif isinstance(x, np.ndarray):
            arr, src_dtype = x, str(x.dtype)
        else:
            raise InputError(f"input must be a numpy array or torch tensor, got {type(x).__name__}")
        if src_dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise InputError(f"input dtype {src_dtype} is not supported; pass float32 NCHW images "
                             "(e.g. engine.preprocess(...) or x.astype(np.float32))")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        spec = self.inputs[0] if self.inputs else None
        if arr.ndim != 4:
            want = spec.describe() if spec else "NCHW (4 dims)"
            raise InputError(f"input has shape {arr.shape} ({arr.ndim} dims); expected {want}. "
                             "Add a batch dimension with x[None] for a single image")
        if spec is not None:
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                if want is not None and got != want:
                    raise InputError(f"input shape {arr.shape} does not match {spec.describe()} "
                                     f"(axis {axis}: got {got}, expected {want})")
        if self.check_finite and not np.isfinite(arr).all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(np.isinf(arr).sum())
            raise InputError(f"input holds {n_nan} NaN and {n_inf} Inf values; fix the "
                             "preprocessing (or pass check_finite=False to run anyway)")
        return arr

    def __call__(self, x):
        arr = self.check_input(x)
        out = self._infer(arr)
        if _is_torch(x):
            import torch
            return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)
        return out
