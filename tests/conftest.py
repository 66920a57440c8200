"""Shared, generic fixtures. Keep this file small: other test files add their own."""
from __future__ import annotations

import os

import pytest


from kernels.env import cuda_usable

# Triton decides at kernel-definition time whether to use its CPU interpreter, so this must
# be set before any test module imports ``kernels``: without a GPU, kernels run interpreted.
if not cuda_usable():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests cleanly without CUDA, and ``tensorrt`` tests without TensorRT."""
    import importlib.util
    has_cuda = cuda_usable()
    has_trt = has_cuda and importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA)"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and an NVIDIA GPU"))


@pytest.fixture(scope="session")
def exported_onnx(tmp_path_factory):
    """Factory ``exported_onnx(name, width=1.0, input_size=None, seed=0, **export_kw)`` ->
    ``(path, model)``: a seeded random-init variant exported once per test session.

    Callers must not modify the returned model or file (copy the file to plant faults).
    """
    import torch
    import engine

    cache = {}
    root = tmp_path_factory.mktemp("onnx-exports")

    def get(name, width=1.0, input_size=None, seed=0, num_classes=None, **export_kw):
        key = (name, width, input_size, seed, num_classes, tuple(sorted(export_kw.items())))
        if key not in cache:
            torch.manual_seed(seed)
            model = engine.create_model(name, width=width, num_classes=num_classes)
            path = root / f"{name}-{len(cache)}.onnx"
            engine.export_onnx(model, path, input_size=input_size, **export_kw)
            cache[key] = (path, model)
        return cache[key]
    return get


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run the PyTorch reference single-threaded for a module (restored afterwards): on a
    shared, busy CPU torch's spinning thread pool costs several times the work itself."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
