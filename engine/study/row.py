"""One measured row of the study (:class:`Row`) and the default subject."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

SUBJECT = "inception_resnet_v2_fmnist"


@dataclass
class Row:
    engine: str
    precision: str
    method: str                       # calibration method, "-" for float rows; "+autoK": K
                                      # layers kept float
    top1: Optional[float] = None      # %
    agreement: Optional[float] = None  # % of test images with the FP32 reference's top-1
    latency_ms: Optional[float] = None  # batch 1, model's own input size (median)
    latency_ms_299: Optional[float] = None  # batch 1, the architecture at 299 (median)
    throughput: Optional[float] = None  # img/s at the eval batch size, model's own size
    calib_seconds: Optional[float] = None
    excluded: List[str] = field(default_factory=list)
    note: str = ""
    target: str = "-"                 # the engine the Q/DQ file was written for (its layout)
    throughput_b8: Optional[float] = None  # img/s at batch 8, model's own size (median)
    throughput_b8_streams: Optional[float] = None  # OpenVINO only: img/s at batch 8 under
    streams_b8: Optional[int] = None               # its THROUGHPUT hint, with its streams
    file_mb: Optional[float] = None   # size of the model file, MB
    quantizer: str = "-"              # who wrote the INT8 file: "ours" or an anchor's name
                                      # (engine.anchors); "-" for float rows
    latency_p10: Optional[float] = None  # the spread of latency_ms's timed calls (ms)
    latency_p90: Optional[float] = None
    paired_ratio: Optional[float] = None      # latency / the reference's, median of the
    paired_ratio_p10: Optional[float] = None  # interleaved rounds (--paired-rounds), with
    paired_ratio_p90: Optional[float] = None  # the p10/p90 of the rounds' ratios
    cpu_class: str = "-"              # the CPU class the speed was measured on
    accuracy_classes: List[str] = field(default_factory=list)  # the CPU classes of the
                                      # nodes that computed pred: the row's own for an engine
                                      # whose accuracy depends on it, else any (shared)
    pred: Optional[np.ndarray] = field(default=None, repr=False)  # top-1 per test image;
                                      # written to predictions.npz, not to results.json
