"""The triton engine behind :class:`engine.runtime.Runtime`.

``TritonRuntime(path, precision)`` compiles the ONNX file once (:func:`compile_onnx`); per
batch size it allocates one arena, binds every step to its views and, on a GPU, records the
whole plan as one CUDA graph after a first eager run (which autotunes the kernels), so a
call is: copy the input in, replay, copy the output out.

On a machine without a GPU the kernels run under the Triton interpreter (numpy, slow: for
tests). The interpreter must be chosen before :mod:`kernels` is imported; the runtime sets
``TRITON_INTERPRET=1`` itself when it can and warns that it is running interpreted.

Many callers at once: every call of one batch size writes the same arena and replays the same
CUDA graph, so calls (and :meth:`TritonRuntime.intermediates`) take the runtime's lock and run
one at a time; each returns its own copy of the output. For parallel GPU work, load one
runtime per thread.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from kernels.env import cuda_usable, interpreting

from ...errors import BackendUnavailableError
from ...runtime import Runtime, TensorSpec, count_option
from . import ops
from .planner import Plan, Schedule, explain_plan, plan_streams

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class InterpreterWarning(UserWarning):
    """The triton engine runs on the CPU under the Triton interpreter (slow; for tests)."""


def kernels_loaded() -> bool:
    """Whether a kernel launcher module is imported (then ``triton.jit`` has already chosen
    between the interpreter and the GPU for this process)."""
    return any(name in sys.modules for name in ("kernels.conv", "kernels.pool", "kernels.quant"))


def ensure_interpreter() -> None:
    """Make the kernels run under the Triton interpreter (CPU). Must happen before the
    kernel launchers are imported; if they were imported without it, say what to do."""
    if interpreting():
        return
    if kernels_loaded():
        raise BackendUnavailableError(
            "no CUDA GPU, and the Triton kernels were imported without the interpreter; set "
            "TRITON_INTERPRET=1 in the environment before importing anything that imports "
            "`kernels` (or use impl='torch')")
    os.environ["TRITON_INTERPRET"] = "1"


def is_available():
    if cuda_usable():
        return True, "available (CUDA)"
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return False, f"triton cannot be imported ({e}); pip install triton"
    return True, "available on CPU under the Triton interpreter (slow; for tests)"


def compile_onnx(path_or_proto, precision: Optional[str] = None,
                 float_dtype: Optional[str] = None):
    """Read, fold and plan an ONNX model: returns ``(plan, metadata)``.

    precision: None (the file's own, :func:`engine.onnxmeta.file_precision`), fp32, fp16, bf16
    or int8, settled by :func:`engine.onnxmeta.resolve_precision`. Raises
    :class:`~engine.errors.UnsupportedGraphError` naming the first node the engine cannot run.
    """
    from ...onnxmeta import load_onnx, read_metadata, resolve_precision
    from .graph import read_graph
    from .planner import build_plan
    is_proto = hasattr(path_or_proto, "graph")
    proto = path_or_proto if is_proto else load_onnx(path_or_proto)
    meta = read_metadata(proto)
    precision = resolve_precision(precision, meta["precision"], PRECISIONS, backend="triton",
                                  path=path_or_proto if not is_proto else "model.onnx")
    lg = read_graph(proto)
    plan = build_plan(lg, precision, float_dtype)
    return plan, meta


class _Bound:
    """One batch bucket: arena, views, bound steps, static input and (GPU) the streams, the
    events between them and the CUDA graph. Everything a call needs is made here, once."""

    def __init__(self, plan: Plan, batch: int, device, params, impl: str, schedule: Schedule):
        import torch
        self.batch = batch
        self.arena = torch.empty(max(plan.arena_bytes * batch, 1), dtype=torch.uint8, device=device)
        self.views = _views(plan, self.arena, batch)
        c, h, w = plan.input_shape
        self.x = torch.zeros((batch, c, h, w), dtype=torch.float32, device=device)
        self.fns = [ops.bind(s, plan, self.views, params[i], impl, io={"x": self.x})
                    for i, s in enumerate(plan.steps)]
        self.out = self.views[plan.output][:, 0, 0, :]
        self.graph = None
        self.runs = 0
        self.program = None
        if torch.device(device).type == "cuda":
            self._make_streams(schedule, device)

    def _make_streams(self, schedule: Schedule, device):
        """The side streams, one event per step another stream waits for, and the events
        that fork the side streams from the caller's stream and join them back."""
        import torch
        self.side = [torch.cuda.Stream(device) for _ in range(schedule.n_streams - 1)]
        done = {i: torch.cuda.Event() for i in schedule.recorded}
        self.fork = torch.cuda.Event()
        self.joins = [torch.cuda.Event() for _ in self.side]
        self.program = [(fn, schedule.stream[i], [done[j] for j in schedule.waits[i]], done.get(i))
                        for i, fn in enumerate(self.fns)]

    def run(self):
        if self.program is None:
            for f in self.fns:
                f()
        else:
            self._run_streams()

    def _run_streams(self):
        import torch
        main = torch.cuda.current_stream()
        streams = [main] + self.side
        self.fork.record(main)
        for side in self.side:
            side.wait_event(self.fork)
        for fn, k, waits, done in self.program:
            stream = streams[k]
            for event in waits:
                stream.wait_event(event)
            with torch.cuda.stream(stream):
                fn()
            if done is not None:
                done.record(stream)
        for side, join in zip(self.side, self.joins):
            join.record(side)
            main.wait_event(join)


def _views(plan: Plan, arena, batch: int) -> Dict:
    """Value name -> its NHWC view into the arena (a channel slice of its buffer)."""
    import torch
    bufs = []
    for b in plan.buffers:
        dt = ops._torch_dtype(b.dtype)
        n = batch * b.h * b.w * b.channels * torch.empty((), dtype=dt).element_size()
        raw = arena[batch * b.offset: batch * b.offset + n]
        bufs.append(raw.view(dt).view(batch, b.h, b.w, b.channels))
    return {name: bufs[v.buf][..., v.offset:v.offset + v.channels]
            for name, v in plan.values.items() if v.buf >= 0}


class TritonRuntime(Runtime):
    """Runs an ONNX export (FP32 at fp32/fp16/bf16, or a Q/DQ file at int8) on our kernels.

    impl: ``"triton"`` (the kernels) or ``"torch"`` (their PyTorch references; debugging).
    device: ``None`` (CUDA when there is a GPU, else the CPU interpreter), ``"cuda"``, ``"cpu"``.
    cuda_graphs: record each batch bucket's plan as one CUDA graph after its first run (GPU),
    with independent branches on parallel streams inside it (:func:`planner.plan_streams`).
    float_dtype: storage of the float values of an int8 plan (default fp32).
    buckets: batch sizes to bind (arena, views, graph); a call of ``n`` images runs the
    smallest bucket ``>= n`` (zero rows past ``n`` are computed and dropped), a batch above
    every bucket gets its own. Default: each batch size is its own bucket.
    """

    backend = "triton"

    def __init__(self, path, precision: Optional[str] = None, threads: Optional[int] = None,
                 impl: str = "triton", device: Optional[str] = None, cuda_graphs: bool = True,
                 float_dtype: Optional[str] = None, check_finite: bool = True,
                 buckets: Optional[Sequence[int]] = None):
        import torch
        if impl not in ops.IMPLS:
            raise ValueError(f"impl must be one of {ops.IMPLS}, got {impl!r}")
        if device is None:
            device = "cuda" if cuda_usable() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not cuda_usable():
            raise BackendUnavailableError("device='cuda' but torch sees no CUDA GPU")
        self.interpreted = self.device.type == "cpu" and impl == "triton"
        if self.interpreted:
            ensure_interpreter()
        threads = count_option("threads", threads)
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.impl = impl
        self.plan, meta = compile_onnx(path, precision, float_dtype)
        if self.interpreted:
            warnings.warn("the triton engine is running on the CPU under the Triton interpreter "
                          "(TRITON_INTERPRET=1): slow, meant for tests; run on an NVIDIA GPU for "
                          "speed", InterpreterWarning, stacklevel=2)
        c, h, w = self.plan.input_shape
        out_c = self.plan.values[self.plan.output].channels
        super().__init__(path=Path(path) if not hasattr(path, "graph") else None,
                         precision=self.plan.precision, config=meta["config"],
                         inputs=[TensorSpec(self.plan.input, (None, c, h, w))],
                         outputs=[TensorSpec(self.plan.output_name, (None, out_c))],
                         check_finite=check_finite)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._params = [ops.prepare(s, self.plan, self.device) for s in self.plan.steps]
        self.schedule = plan_streams(self.plan)
        self.buckets = sorted({count_option("buckets", b, allow_none=False) for b in buckets or ()})
        self._bucket_of = {n: next(b for b in self.buckets if b >= n)
                           for n in range(1, self.buckets[-1] + 1)} if self.buckets else {}
        self._bound: Dict[int, _Bound] = {}
        # CUDA: recorded after each call; the next call waits for it before it writes the arena
        self._arena_free = torch.cuda.Event() if self.device.type == "cuda" else None

    # ------------------------------------------------------------------ running
    def _get(self, batch: int) -> _Bound:
        """The bound bucket for ``batch`` images, made on first use."""
        size = self._bucket_of.get(batch, batch)
        b = self._bound.get(size)
        if b is None:
            b = self._bound[size] = _Bound(self.plan, size, self.device, self._params, self.impl,
                                           self.schedule)
        return b

    def _run(self, x):
        """x: NCHW float32 tensor (any device; copied into the static input on
        ``self.device``) -> [N, C] float32 tensor on ``self.device``, the caller's own: the one
        tensor a call allocates."""
        import torch
        n = int(x.shape[0])
        with self._lock:
            b = self._get(n)
            self._after_previous_call()
            if n == b.batch:
                b.x.copy_(x)
            else:
                b.x[:n].copy_(x)
            if b.graph is not None:
                b.graph.replay()
            else:
                b.run()
                b.runs += 1
                if self.cuda_graphs and b.runs == 1:
                    b.graph = self._capture(b)
            out = torch.empty((n, b.out.shape[1]), dtype=torch.float32, device=self.device)
            out.copy_(b.out if n == b.batch else b.out[:n])
            if self._arena_free is not None:
                self._arena_free.record(torch.cuda.current_stream(self.device))
            return out

    def _after_previous_call(self):
        """On a GPU, make this thread's stream wait until the previous call (perhaps queued
        on another thread's stream) has finished with the arena."""
        if self._arena_free is not None:
            import torch
            torch.cuda.current_stream(self.device).wait_event(self._arena_free)

    @staticmethod
    def _capture(b: _Bound):
        """Record ``b``'s whole plan as one CUDA graph (after its first, autotuning run)."""
        import torch
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            b.run()                                  # warm on the capture stream
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            b.run()
        return graph

    def _infer(self, x: np.ndarray) -> np.ndarray:
        import torch
        return self._run(torch.from_numpy(x)).cpu().numpy()

    def _infer_device(self, x):
        """A validated float32 CUDA tensor in, the output on the GPU out (no host copy)."""
        return self._run(x)

    # ------------------------------------------------------------------ inspection
    def tensor_names(self) -> List[str]:
        """ONNX tensor names :meth:`intermediates` can return."""
        return self.plan.tensor_names()

    def intermediates(self, x, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Run ``x`` eagerly, step by step, and return the named tensors as float32 arrays,
        NCHW (``[N, C]`` after the global pool), dequantised where stored int8.

        names: ONNX tensor names (default: all that the plan keeps). Names the plan does not
        materialise (e.g. a conv's output before its fused ReLU) are left out.
        """
        import torch
        arr = self.check_input(x)
        plan = self.plan
        wanted = list(names) if names is not None else self.tensor_names()
        by_value: Dict[str, List[str]] = {}
        for n in wanted:
            v = plan.value_of(n)
            if v is not None and v.buf >= 0:
                by_value.setdefault(v.name, []).append(n)
        ready = plan.ready()
        at: Dict[int, List[str]] = {}
        for v in by_value:
            at.setdefault(ready[v], []).append(v)
        out: Dict[str, np.ndarray] = {}
        with self._lock:
            self._after_previous_call()
            count = arr.shape[0]
            b = self._get(count)
            b.x[:count].copy_(torch.from_numpy(arr).to(self.device))
            for i, f in enumerate(b.fns):
                f()
                for v in at.get(i, []):
                    val = plan.values[v]
                    t = b.views[v][:count].float()
                    if val.scale is not None:
                        t = t * val.scale
                    t = t[:, 0, 0, :] if val.flat else t.permute(0, 3, 1, 2)
                    a = t.cpu().numpy().copy()
                    for n in by_value[v]:
                        out[n] = a
        return out

    def explain(self, batch: int = 1) -> str:
        configs = {i: ops.describe_config(s, self.plan, batch) for i, s in enumerate(self.plan.steps)}
        title = self.config.name if self.config is not None else str(self.path)
        extra = f" | impl {self.impl} on {self.device.type}" + \
            (" (Triton interpreter)" if self.interpreted else "") + \
            (f", CUDA graphs on {self.schedule.n_streams} streams" if self.cuda_graphs else "")
        return explain_plan(self.plan, batch, {k: v for k, v in configs.items() if v},
                            title + extra)

    def close(self):
        with self._lock:
            self._bound.clear()
        super().close()


__all__ = ["TritonRuntime", "compile_onnx", "is_available", "InterpreterWarning"]
