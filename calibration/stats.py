"""Streaming per-tensor statistics over the FP32 graph: min, max and a histogram of ``|x|``.

Memory is bounded: each tensor keeps ``bins`` (default 2048) counts, whatever the number of
images. The histogram covers ``[0, edges[-1]]``; its range is set by the first batch and grows
by powers of two when a later batch holds a larger value, merging adjacent bins pairwise, so
re-binning is exact and no value is ever counted twice or dropped. At the end at least half of
the bins span the observed range.

The statistics pass runs the FP32 ONNX graph with ONNX Runtime, with the tensors to calibrate
added as extra graph outputs (on a copy of the model; the file is not touched).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .errors import CalibrationDataError, CalibrationError

DEFAULT_BINS = 2048


class Histogram:
    """Histogram of ``|x|`` with ``bins`` equal bins on ``[0, range_]``, plus exact min/max."""

    def __init__(self, name: str = "", bins: int = DEFAULT_BINS):
        self.name = name
        self.bins = int(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.range_ = 0.0            # upper edge of the last bin; 0 until the first non-zero value
        self.min = np.inf
        self.max = -np.inf
        self.total = 0

    @property
    def amax(self) -> float:
        return float(max(abs(self.min), abs(self.max))) if self.total else 0.0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.range_ if self.range_ > 0 else 1.0, self.bins + 1)

    def _grow(self, new_max: float):
        factor = 1
        while self.range_ * factor < new_max:
            factor *= 2
        if factor == 1:
            return
        # merge ``factor`` adjacent bins into one; the upper bins become empty
        if factor >= self.bins:              # the old range fits in the new first bin
            merged = self.counts.sum(keepdims=True)
        else:
            merged = self.counts.reshape(-1, factor).sum(axis=1)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.counts[: len(merged)] = merged
        self.range_ *= factor

    def update(self, x: np.ndarray):
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationDataError(
                f"tensor {self.name!r} holds NaN or Inf values during calibration; check the "
                "calibration images (preprocessing) and the model weights")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        a = np.abs(x.ravel())
        amax = max(abs(lo), abs(hi))
        if self.range_ == 0.0:
            if amax == 0.0:
                self.counts[0] += a.size
                self.total += a.size
                return
            self.range_ = amax
        elif amax > self.range_:
            self._grow(amax)
        idx = (a * np.float32(self.bins / self.range_)).astype(np.int64)
        np.minimum(idx, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.total += a.size

    def merge(self, other: "Histogram") -> "Histogram":
        """A histogram of both inputs' values (bins re-aligned to the larger range)."""
        out = Histogram(self.name, self.bins)
        for h in (self, other):
            if h.total == 0:
                continue
            out.min, out.max = min(out.min, h.min), max(out.max, h.max)
        out.total = self.total + other.total
        big = max(self.range_, other.range_)
        out.range_ = big
        for h in (self, other):
            if h.total == 0:
                continue
            if h.range_ == 0.0:
                out.counts[0] += h.counts[0]
                continue
            centers = (np.arange(h.bins) + 0.5) * (h.range_ / h.bins)
            idx = np.minimum((centers * (out.bins / big)).astype(np.int64), out.bins - 1)
            np.add.at(out.counts, idx, h.counts)
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "bins": self.bins, "range": self.range_, "min": self.min,
                "max": self.max, "total": self.total, "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Histogram":
        h = cls(d["name"], d["bins"])
        h.range_, h.min, h.max, h.total = d["range"], d["min"], d["max"], d["total"]
        h.counts = np.asarray(d["counts"], dtype=np.int64)
        return h

    def __repr__(self):
        return (f"<Histogram {self.name} n={self.total} min={self.min:.4g} max={self.max:.4g} "
                f"range={self.range_:.4g}>")


@dataclass
class Statistics:
    """Histograms of every calibrated tensor, plus what produced them.

    Reuse one :class:`Statistics` for several methods: ``calibration.quantize(...,
    statistics=stats)`` skips the pass over the data.
    """

    histograms: Dict[str, Histogram] = field(default_factory=dict)
    num_images: int = 0
    source: str = ""
    seconds: float = 0.0
    model_sha256: Optional[str] = None

    def __getitem__(self, name) -> Histogram:
        return self.histograms[name]

    def __contains__(self, name) -> bool:
        return name in self.histograms

    def amax(self, method: str = "entropy", percentile: float = 99.99,
             names: Optional[Iterable[str]] = None) -> Dict[str, float]:
        """``{tensor: amax}`` by ``method`` for ``names`` (default: every tensor)."""
        from .methods import compute_amax
        names = list(self.histograms) if names is None else list(names)
        return {n: compute_amax(self.histograms[n], method, percentile) for n in names}

    def save(self, path):
        from engine.fileio import atomic_write_text
        atomic_write_text(path, json.dumps({
            "num_images": self.num_images, "source": self.source, "seconds": self.seconds,
            "model_sha256": self.model_sha256,
            "histograms": [h.to_dict() for h in self.histograms.values()]}))

    @classmethod
    def load(cls, path) -> "Statistics":
        d = json.loads(open(path, encoding="utf-8").read())
        hs = [Histogram.from_dict(h) for h in d["histograms"]]
        return cls({h.name: h for h in hs}, d["num_images"], d["source"], d["seconds"],
                   d.get("model_sha256"))


def _session_with_outputs(proto, names: Sequence[str], threads: Optional[int]):
    """An ONNX Runtime session over a copy of ``proto`` that also returns ``names``."""
    import onnx
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    # extra outputs keep every intermediate alive; basic optimisation keeps them all reachable
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def collect_statistics(model, data, tensors: Optional[Sequence[str]] = None,
                       bins: int = DEFAULT_BINS, num_images: Optional[int] = None,
                       batch_size: int = 32, threads: Optional[int] = None,
                       progress: bool = False) -> Statistics:
    """Run the FP32 graph over ``data`` and histogram ``tensors`` (default: every tensor the
    Q/DQ writer would quantize).

    model: path or ``onnx.ModelProto`` (FP32). data: anything :func:`calibration.data.batches`
    accepts. num_images: stop after this many images. threads: ONNX Runtime intra-op threads.
    """
    from .data import batches, check_num_images, describe_source
    from .graph import load_fp32, plan_quantization
    num_images = check_num_images(num_images)
    proto = load_fp32(model)
    if tensors is None:
        # every tensor any plan may quantize (the head's too), so one pass serves every target
        tensors = plan_quantization(proto, quantize_gemm=True).activation_tensors()
    tensors = list(dict.fromkeys(tensors))
    sess = _session_with_outputs(proto, tensors, threads)
    in_name = sess.get_inputs()[0].name
    hists = {n: Histogram(n, bins) for n in tensors}
    seen = 0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_images, unit="img", desc="calibrating", leave=False)
    try:
        for x in batches(data, model=proto, batch_size=batch_size, limit=num_images):
            outs = sess.run(tensors, {in_name: x})
            for n, arr in zip(tensors, outs):
                hists[n].update(arr)
            seen += len(x)
            if bar is not None:
                bar.update(len(x))
    finally:
        if bar is not None:
            bar.close()
    if seen == 0:
        raise CalibrationDataError(f"the calibration source {describe_source(data)} gave no "
                                   "images; pass a folder of images, an .npy/.npz array or "
                                   "an iterable of NCHW batches")
    return Statistics(hists, seen, describe_source(data), time.perf_counter() - t0)
