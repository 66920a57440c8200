"""The PyTorch reference as a runtime (backend ``torch``): eager, the ground truth.

``TorchRuntime(model)`` wraps an eval-mode ``nn.Module`` (e.g. from ``engine.create_model``);
``TorchRuntime("weights.pth", model="inception_resnet_v2")`` builds the variant and loads a
checkpoint. Precision: ``fp32``; ``bf16`` (autocast, CPU or CUDA); ``fp16`` (CUDA only: the
model and inputs in half). ``channels_last=True`` uses NHWC memory format (the GPU baseline).
``threads`` sets ``torch.set_num_threads`` for the whole process, once, at construction.

Intermediates are module outputs captured by forward hooks, keyed by module path
(``repeat.0``, ``repeat.0.branch1.1``); ``engine.verify`` matches them to ONNX tensors.

Many callers at once: a call runs the eval-mode module under ``inference_mode``, which only
reads it (autocast and inference mode are per-thread states), so calls run side by side.
Forward hooks on the shared module would see every thread's forward, so a capture for
:meth:`TorchRuntime.intermediates` waits for the calls in flight, runs alone, and holds new
calls back until it is done.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from kernels.env import cuda_usable

from ..errors import BackendUnavailableError, InputError, UnsupportedPrecisionError
from ..onnxmeta import normalize_precision
from ..runtime import Runtime, TensorSpec, count_option
from . import require


def is_available():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return False, f"torch cannot be imported ({e}); pip install torch"
    return True, "available"


class _Gate:
    """Many forwards at once, or one hooked capture alone. A capture that is waiting holds
    back new forwards, so a steady stream of calls cannot keep it out."""

    def __init__(self):
        self._cond = threading.Condition()
        self._forwards = 0
        self._captures_waiting = 0
        self._capturing = False

    @contextlib.contextmanager
    def forward(self):
        with self._cond:
            self._cond.wait_for(lambda: not (self._capturing or self._captures_waiting))
            self._forwards += 1
        try:
            yield
        finally:
            with self._cond:
                self._forwards -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def capture(self):
        with self._cond:
            self._captures_waiting += 1
            self._cond.wait_for(lambda: not (self._capturing or self._forwards))
            self._captures_waiting -= 1
            self._capturing = True
        try:
            yield
        finally:
            with self._cond:
                self._capturing = False
                self._cond.notify_all()


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, module, precision: Optional[str] = None, threads: Optional[int] = None,
                 device: str = "cpu", channels_last: bool = False, check_finite: bool = True,
                 model: Optional[str] = None):
        torch = require("torch", "torch")
        threads = count_option("threads", threads)
        path = None
        if isinstance(module, (str, Path)):
            path = Path(module)
            if not model:
                raise InputError("a checkpoint needs its variant: engine.load('w.pth', "
                                 "backend='torch', model='inception_resnet_v2')")
        precision = normalize_precision(precision) or "fp32"
        if precision == "int8":
            raise UnsupportedPrecisionError(
                "the torch backend runs fp32, bf16 or fp16; INT8 runs on "
                "openvino/onnxruntime/tensorrt from a Q/DQ ONNX")
        if precision == "fp16" and not str(device).startswith("cuda"):
            raise BackendUnavailableError("torch fp16 runs on CUDA only; use device='cuda' or "
                                          "precision='bf16' on CPU")
        if str(device).startswith("cuda") and not cuda_usable():
            raise BackendUnavailableError("torch reports no CUDA device; use device='cpu'")
        if path is not None:
            from ..models.registry import create_model
            module = create_model(model, weights=str(path))
        if threads is not None:
            torch.set_num_threads(threads)
        param = next(module.parameters(), None)
        if param is not None and (param.device != torch.device(device) or precision == "fp16"
                                  or channels_last):
            import copy
            module = copy.deepcopy(module)  # never move or convert the caller's model in place
        self.module = module.eval().to(device)
        if precision == "fp16":
            self.module = self.module.half()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.threads = threads
        self._gate = _Gate()
        cfg = getattr(module, "config", None)
        # any spatial size the network takes (>= its minimum), so H and W stay open
        shape = (None, cfg.input_size[0], None, None) if cfg is not None else (None,) * 4
        out = (cfg.output if cfg is not None else "logits")
        super().__init__(path=path, precision=precision, config=cfg,
                         inputs=[TensorSpec("input", shape)],
                         outputs=[TensorSpec(out, (None, None))], check_finite=check_finite)

    def _forward(self, x):
        """Run a validated float32 torch tensor through the module; a float32 tensor on
        ``self.device`` comes back."""
        import torch
        x = x.to(self.device, non_blocking=True)
        if self.precision == "fp16":
            x = x.half()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._gate.forward(), torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    y = self.module(x)
            else:
                y = self.module(x)
        return y.float()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        import torch
        return self._forward(torch.from_numpy(x)).cpu().numpy()

    def _infer_device(self, x):
        # a CUDA tensor in, a CUDA tensor out on the input's device: no round trip to the host
        return self._forward(x).to(x.device)

    def intermediates(self, x, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Outputs of the modules at ``names`` (module paths; default: every named module)."""
        import torch
        from ..models.capture import capture_modules
        arr = self.check_input(x)
        names = list(names) if names is not None else [n for n, _ in self.module.named_modules() if n]
        t = torch.from_numpy(arr).to(self.device)
        if self.precision == "fp16":
            t = t.half()
        ctx = (torch.autocast(self.device.type, dtype=torch.bfloat16)
               if self.precision == "bf16" else contextlib.nullcontext())
        with self._gate.capture(), ctx:
            acts = capture_modules(self.module, t, names)
        return acts

    def close(self):
        self.module = None
        super().close()
