"""Inception inference engine: PyTorch reference, ONNX export, CPU/GPU engines, parity checks.

``import engine`` is cheap: heavy or optional libraries (onnx, openvino, onnxruntime, tensorrt,
triton) are imported only when the function that needs them is called.
"""
from __future__ import annotations

import importlib

from .version import __version__  # noqa: E402,F401

# public name -> module that defines it (imported on first use)
_LAZY = {
    "list_models": "engine.models.registry",
    "get_config": "engine.models.registry",
    "create_model": "engine.models.registry",
    "ModelConfig": "engine.models.registry",
    "load_weights": "engine.weights",
    "preprocess": "engine.preprocess",
    "export_onnx": "engine.export",
    "read_metadata": "engine.onnxmeta",
    "load": "engine.loader",
    "available_backends": "engine.loader",
    "verify": "engine.parity",
    "build": "engine.backends.tensorrt",
    "Runtime": "engine.runtime",
}

from .errors import (  # noqa: E402,F401
    ArtifactError, BackendUnavailableError, EngineError, InputError, InvalidGraphError,
    UnknownModelError, UnsupportedGraphError, UnsupportedPrecisionError, WeightsError)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
