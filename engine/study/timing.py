"""Timing inside the study: the median latency of a call, and the machine it ran on."""
from __future__ import annotations

import os
import platform
from typing import Callable

import numpy as np

from ..runtime import count_option


def latency_ms(fn: Callable, x: np.ndarray, iters: int = 20, warmup: int = 3) -> float:
    """Median batch latency of ``fn(x)`` in ms (:func:`engine.timing.median_ms`)."""
    from ..timing import median_ms
    count_option("iters", iters, allow_none=False)
    count_option("warmup", warmup, minimum=0, allow_none=False)
    return median_ms(lambda: fn(x), iters=iters, warmup=warmup)


def latency_spread(fn: Callable, x: np.ndarray, iters: int = 20, warmup: int = 3) -> tuple:
    """``(median, p10, p90)`` of the batch latency of ``fn(x)`` in ms, over ``iters`` timed
    calls (:func:`engine.timing.time_calls`): the figure and its spread."""
    from ..timing import time_calls
    count_option("iters", iters, allow_none=False)
    count_option("warmup", warmup, minimum=0, allow_none=False)
    samples = np.asarray(time_calls(lambda: fn(x), iters=iters, warmup=warmup), float)
    return (float(np.median(samples)), float(np.percentile(samples, 10)),
            float(np.percentile(samples, 90)))


def paired_latency(fn: Callable, baseline: Callable, x: np.ndarray, iters: int = 20,
                   rounds: int = 5) -> tuple:
    """``((median, p10, p90) of fn's latency in ms, [fn/baseline per round])``: ``rounds``
    rounds, each timing ``fn(x)`` then ``baseline(x)`` for ``iters // rounds`` calls, so
    both see the same machine load; each round's ratio is of its two medians."""
    from ..timing import time_calls
    count_option("iters", iters, allow_none=False)
    count_option("rounds", rounds, allow_none=False)
    per = max(1, iters // rounds)
    mine, ratios = [], []
    for _ in range(rounds):
        a = time_calls(lambda: fn(x), iters=per, warmup=1)
        b = time_calls(lambda: baseline(x), iters=per, warmup=1)
        mine += list(a)
        ratios.append(float(np.median(a)) / float(np.median(b)))
    samples = np.asarray(mine, float)
    return ((float(np.median(samples)), float(np.percentile(samples, 10)),
             float(np.percentile(samples, 90))), ratios)


def machine_info() -> dict:
    import torch
    from ..timing import cpu_model
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


# The instruction sets that decide INT8 speed and accuracy on a CPU, best first, each as
# named in /proc/cpuinfo's flags and as the report names it
ISA_LEVELS = (("amx_int8", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
              ("avx512_vnni", "AVX-512 VNNI"), ("avx2", "AVX2"))


def cpu_flags() -> set:
    from pathlib import Path
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_level(flags) -> str:
    """The best INT8-relevant instruction set among ``flags`` (:data:`ISA_LEVELS`)."""
    return next((name for flag, name in ISA_LEVELS if flag in flags), "baseline x86/other")


def cpu_class(label: str = "") -> dict:
    """What this machine reports as its CPU class: model name, ISA level, cores, OpenVINO
    version, and the class's name (``label`` when the node was given one, else
    ``ISA level, model name``)."""
    from ..timing import cpu_model
    try:
        import openvino
        ov = openvino.__version__
    except ImportError:
        ov = None
    model, isa = cpu_model(), isa_level(cpu_flags())
    return {"name": label or f"{isa}, {model}", "model": model, "isa": isa,
            "cores": os.cpu_count(), "openvino": ov}
