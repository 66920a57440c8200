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


def machine_info() -> dict:
    import torch
    from ..timing import cpu_model
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
