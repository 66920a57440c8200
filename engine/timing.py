"""The one timing loop: every latency in this project (the study, ``inception-engine bench``,
the Triton-engine and kernel benchmarks) is measured by :func:`time_calls`.

A call is timed from just before it starts until its result is ready. On a GPU "ready"
means the device has finished, so CUDA work is synchronised: with ``cuda=True`` each call
is bracketed by CUDA events (device time, what a kernel benchmark wants); with
``cuda=None`` (the default) the loop synchronises whenever a call returned a CUDA tensor and
reports wall-clock time (what a caller of a runtime sees, copies included).
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import InputError
from .runtime import count_option


def _returns_cuda(out) -> bool:
    if isinstance(out, (list, tuple)):
        return any(_returns_cuda(o) for o in out)
    return bool(getattr(out, "is_cuda", False))


def time_calls(fn: Callable[[], object], iters: int = 20, warmup: int = 3,
               duration: float = 0.0, cuda: Optional[bool] = None) -> List[float]:
    """Milliseconds of each of at least ``iters`` calls of ``fn()``, after ``warmup`` untimed
    calls; more calls while less than ``duration`` seconds have been timed (``trtexec
    --duration``). ``cuda``: ``True`` times with CUDA events, ``None`` synchronises when a
    call returns CUDA tensors, ``False`` never touches CUDA."""
    iters = count_option("iters", iters, 1, allow_none=False)
    warmup = count_option("warmup", warmup, 0, allow_none=False)
    if not 0 <= duration < float("inf"):
        raise InputError(f"duration must be a finite number of seconds >= 0, got {duration!r}")
    torch = None
    if cuda is not False:
        import torch  # CUDA timing needs torch; the CPU path does not
    for _ in range(warmup):
        out = fn()
        if cuda or (cuda is None and _returns_cuda(out)):
            torch.cuda.synchronize()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < duration:
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(float(a.elapsed_time(b)))
            continue
        t0 = time.perf_counter()
        out = fn()
        if cuda is None and _returns_cuda(out):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def concurrent_rate(fn: Callable[[], object], workers: int, calls: int,
                    warmup: int = 1) -> Dict[str, float]:
    """Calls per second of ``fn()`` with ``workers`` threads calling at once: ``calls`` calls
    in all, after ``warmup`` untimed calls per worker.

    This is throughput as a server sees it: an engine that runs several requests in parallel
    (OpenVINO's THROUGHPUT hint: one infer request per stream) only shows its rate when that
    many callers keep it busy. ``fn`` must be thread-safe (every runtime here is). Returns
    ``calls``, ``seconds``, ``calls_per_s`` and ``workers``."""
    from concurrent.futures import ThreadPoolExecutor
    workers = count_option("workers", workers, 1, allow_none=False)
    calls = count_option("calls", calls, 1, allow_none=False)
    warmup = count_option("warmup", warmup, 0, allow_none=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(fn) for _ in range(warmup * workers)]:
            f.result()
        start = time.perf_counter()
        for f in [pool.submit(fn) for _ in range(calls)]:
            f.result()
        seconds = time.perf_counter() - start
    return {"calls": calls, "seconds": seconds, "calls_per_s": calls / seconds,
            "workers": workers}


def median_ms(fn: Callable[[], object], iters: int = 20, warmup: int = 3,
              cuda: Optional[bool] = None) -> float:
    """Median of :func:`time_calls`."""
    return float(np.median(time_calls(fn, iters=iters, warmup=warmup, cuda=cuda)))


def percentiles(samples_ms: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p95/p99, mean, min, max (ms) and the sample count."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timing samples")
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "max_ms": float(a.max()),
            "n": int(a.size)}


def summarize(samples_ms: Sequence[float], batch: int) -> Dict[str, float]:
    """:func:`percentiles` plus the batch and the throughput at the median (images/s)."""
    s = percentiles(samples_ms)
    s["throughput_ips"] = batch * 1e3 / s["p50_ms"]
    s["batch"] = batch
    return s


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), recorded beside every figure: speed is only
    comparable within one run on one machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
