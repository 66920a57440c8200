"""The TensorRT backend: ``engine.build`` (ONNX -> plan + sidecar) and ``engine.load("x.plan")``.

- :mod:`.meta`: what a plan needs around it, in plain Python (sidecar, compatibility, build
  options); tested without TensorRT;
- :mod:`.fp16`: FP32 ONNX -> FP16 ONNX with onnx and numpy (TensorRT 11 builds strongly
  typed networks);
- :mod:`.probe`: the machine as TensorRT sees it (the library, CUDA access, the GPU, a logger);
- :mod:`.builder`: the TensorRT builder (ONNX -> plan);
- :mod:`.runtime`: the plan runtime.
"""
from .builder import build  # noqa: F401
from .runtime import TensorRTRuntime, is_available  # noqa: F401
