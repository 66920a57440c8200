"""The TensorRT backend: ``engine.build`` (ONNX -> plan + sidecar) and ``engine.load("x.plan")``.

- :mod:`.meta`: what a plan needs around it, in plain Python (sidecar, compatibility, build
  options); tested without TensorRT;
- :mod:`.fp16`: FP32 ONNX -> FP16 ONNX with onnx and numpy (TensorRT 11 builds strongly
  typed networks);
- :mod:`.runtime`: the library-bound shell (probing, builder, plan runtime).
"""
from .runtime import TensorRTRuntime, build, is_available  # noqa: F401
