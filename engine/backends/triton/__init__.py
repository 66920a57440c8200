"""The triton engine: our own GPU engine, compiling an ONNX export to a plan on :mod:`kernels`.

Pipeline (each a module of this package)::

    ONNX ──graph.read_graph──► layers (BN/scale/Q-DQ folded; conv+ReLU, residual, pools, head fused)
         ──planner.build_plan─► plan (storage per value, in-place concats, merged 1x1 heads,
                                       in-place residuals, one arena, printable)
         ──planner.plan_streams► stream per launch from the dependency DAG, event joins
         ──ops.bind───────────► prebound launches on preallocated views, checked once
                                 (on a GPU: one CUDA graph per batch bucket, the branches of
                                 each block on parallel streams inside it)

Use::

    rt = engine.load("irv2.onnx", backend="triton", precision="fp16")   # or fp32/bf16/int8
    logits = rt(images)
    print(engine.backends.triton.explain("irv2.onnx", precision="fp16"))

On a CPU-only machine the kernels run under the Triton interpreter (slow; tests only), and
the runtime warns. ``impl="torch"`` runs the kernels' PyTorch references instead.
"""
from __future__ import annotations

from typing import Optional


def explain(path, precision: Optional[str] = None, batch: int = 1, impl: str = "triton",
            float_dtype: Optional[str] = None) -> str:
    """The execution plan of an ONNX file as text: fusions (convs per launch, fused ReLUs,
    residual epilogues, concats written in place, merged 1x1 heads), the stream of every
    launch and the launches it waits for on other streams, what it reads and writes, and the
    buffers of the arena. Compiles only; runs nothing."""
    from kernels.env import cuda_usable

    from . import ops
    from .planner import explain_plan
    from .runtime import compile_onnx, kernels_loaded
    plan, meta = compile_onnx(path, precision, float_dtype)
    cfg = meta["config"]
    title = cfg.name if cfg is not None else str(path)
    configs = None
    # tiles are read from the kernels only where that cannot fix their mode too early
    if kernels_loaded() or cuda_usable():
        configs = {i: ops.describe_config(s, plan, batch) for i, s in enumerate(plan.steps)}
        configs = {k: v for k, v in configs.items() if v}
    return explain_plan(plan, batch, configs, title)


def compile(path, precision: Optional[str] = None, float_dtype: Optional[str] = None):
    """The :class:`~engine.backends.triton.planner.Plan` of an ONNX file (see :func:`explain`)."""
    from .runtime import compile_onnx
    return compile_onnx(path, precision, float_dtype)[0]


def __getattr__(name):
    if name in ("TritonRuntime", "is_available", "InterpreterWarning", "compile_onnx",
                "ensure_interpreter", "kernels_loaded"):
        from . import runtime
        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
