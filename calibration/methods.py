"""Calibration methods: from a histogram of ``|x|`` to the clipping range ``amax``.

Activations are quantized per tensor and symmetrically, ``scale = amax / 127``. Every method
takes a :class:`~calibration.stats.Histogram` (``counts`` of ``|x|`` over ``[0, edges[-1]]``
and the exact ``amax`` seen):

- ``minmax``: ``amax = max |x|``, nothing clipped;
- ``percentile``: the ``p``-th percentile of ``|x|`` (default 99.99), linear inside a bin;
- ``entropy``: TensorRT's EntropyCalibration2 / pytorch-quantization: for each candidate
  threshold ``i`` (in bins, from 128 up), fold the tail into bin ``i-1`` (P), requantize
  bins ``[0, i)`` into 128 levels spread back over their non-empty bins (Q), and keep the
  threshold with the smallest KL(P || Q) (the last one on ties). Bin 0 is set to bin 1
  first, so the spike of ReLU zeros does not dominate. Evaluated in closed form for all
  candidates at once (prefix sums), not in a Python loop;
- ``mse``: the threshold that minimises the expected squared error of quantize-dequantize
  over the histogram (bin centres), searched over bin edges.

Weights are quantized per output channel (axis 0) from their exact max ``|w|``:
:func:`weight_amax`, :func:`quantize_weight`.
"""
from __future__ import annotations

import numpy as np

from .errors import CalibrationArgumentError, CalibrationError

METHODS = ("minmax", "percentile", "entropy", "mse")
NUM_QUANT_BINS = 128          # levels on one side of a signed 8-bit grid (0..127 plus sign)
QMAX = 127                    # int8, narrow range [-127, 127]
UINT8_MAX = 255               # uint8 with zero point 0, for tensors that are >= 0


def _check_hist(hist):
    if hist.total == 0:
        raise CalibrationError(f"no values were recorded for tensor {hist.name!r}; "
                               "calibrate with at least one batch")


def amax_minmax(hist) -> float:
    _check_hist(hist)
    return float(hist.amax)


def check_percentile(percentile) -> float:
    """``percentile`` as a float in (0, 100], or a CalibrationArgumentError naming it."""
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.floating)) \
            or not 0 < percentile <= 100:
        raise CalibrationArgumentError(
            f"percentile must be a number in (0, 100], got {percentile!r}; 99.99 is the usual "
            "choice, 100 is the maximum |x|")
    return float(percentile)


def amax_percentile(hist, percentile: float = 99.99) -> float:
    """The ``percentile`` of ``|x|``; linear interpolation inside the bin that crosses it."""
    _check_hist(hist)
    percentile = check_percentile(percentile)
    if percentile == 100.0:
        return float(hist.amax)
    counts = hist.counts.astype(np.float64)
    cdf = np.cumsum(counts)
    target = percentile / 100.0 * cdf[-1]
    i = int(np.searchsorted(cdf, target, side="left"))
    below = cdf[i - 1] if i > 0 else 0.0
    frac = (target - below) / counts[i] if counts[i] > 0 else 1.0
    lo, hi = hist.edges[i], hist.edges[i + 1]
    return float(min(lo + frac * (hi - lo), hist.amax))


def _trim(counts):
    nz = np.flatnonzero(counts)
    return counts[: nz[-1] + 1] if len(nz) else counts[:1]


def entropy_divergences(counts, num_quant_bins: int = NUM_QUANT_BINS, start_bin: int = None):
    """KL(P || Q) for each candidate threshold ``i`` in ``[start_bin, len(counts)]``.

    Returns ``(candidates, divergences)``. ``counts`` are taken as they are (the caller sets
    bin 0 to bin 1 if it wants TensorRT's treatment of the zero spike).
    """
    b = np.asarray(counts, dtype=np.float64)
    n = len(b)
    start = num_quant_bins if start_bin is None else start_bin
    if n < start:
        return np.array([n]), np.array([0.0])
    cand = np.arange(start, n + 1)                       # threshold after bin i-1
    total = b.sum()
    nz = (b != 0).astype(np.float64)
    cs = np.concatenate([[0.0], np.cumsum(b)])            # cs[k] = sum b[:k]
    cnz = np.concatenate([[0.0], np.cumsum(nz)])
    blogb = np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0)), 0.0)
    cblogb = np.concatenate([[0.0], np.cumsum(blogb)])

    # chunk j of candidate i holds source bins k with floor(k * nq / i) == j, i.e.
    # k in [ceil(j * i / nq), ceil((j + 1) * i / nq))
    j = np.arange(num_quant_bins + 1)
    starts = -((-np.outer(cand, j)) // num_quant_bins)   # ceil, shape (C, nq + 1)
    s_sum = cs[starts[:, 1:]] - cs[starts[:, :-1]]        # chunk sums of b over [0, i)
    s_cnt = cnz[starts[:, 1:]] - cnz[starts[:, :-1]]      # non-empty bins per chunk
    avg = np.divide(s_sum, s_cnt, out=np.zeros_like(s_sum), where=s_cnt > 0)
    log_avg = np.log(np.where(avg > 0, avg, 1.0))
    # bins [0, i-1) are unchanged in P; their Q value is the chunk average
    last = cand - 1
    s_sum_excl = s_sum.copy()
    s_sum_excl[:, -1] -= b[last]                          # bin i-1 lies in the last chunk
    q_tot = cs[cand]                                      # sum of Q before normalisation
    head_b = cs[last]
    with np.errstate(divide="ignore", invalid="ignore"):
        term_p = cblogb[last] - np.log(total) * head_b        # sum b log(b / T)
        term_q = (s_sum_excl * log_avg).sum(axis=1) - np.log(q_tot) * head_b  # b log(q / Qt)
        kl = (term_p - term_q) / total
    # bin i-1 carries the folded tail in P
    p_last = b[last] + (total - cs[cand])
    q_last = np.where(b[last] != 0, avg[:, -1], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        last_term = np.where(
            p_last > 0,
            p_last / total * (np.log(p_last / total) - np.log(q_last / q_tot)), 0.0)
    kl = kl + np.where((p_last > 0) & (q_last == 0), np.inf, last_term)
    return cand, np.where(np.isnan(kl), np.inf, kl)


def amax_entropy(hist, num_quant_bins: int = NUM_QUANT_BINS) -> float:
    _check_hist(hist)
    counts = _trim(hist.counts).astype(np.float64)
    if len(counts) <= num_quant_bins:                      # fewer bins than levels: no clipping
        return float(hist.amax)
    counts = counts.copy()
    counts[0] = counts[1]
    cand, kl = entropy_divergences(counts, num_quant_bins)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))          # last minimum, as TensorRT
    return float(min(hist.edges[cand[best]], hist.amax))


def amax_mse(hist, num_candidates: int = 512) -> float:
    _check_hist(hist)
    counts = _trim(hist.counts).astype(np.float64)
    n = len(counts)
    edges = hist.edges[: n + 1]
    centers = 0.5 * (edges[:-1] + edges[1:])
    centers[0] = 0.0 if hist.counts[0] > 0 else centers[0]  # bin 0 mostly holds exact zeros
    lo = min(NUM_QUANT_BINS // 2, n)
    cand = np.unique(np.linspace(lo, n, num=min(num_candidates, n - lo + 1)).round().astype(int))
    cand = cand[cand > 0]
    amaxes = edges[cand]
    best, best_err = float(hist.amax), np.inf
    for chunk in np.array_split(np.arange(len(amaxes)), max(1, len(amaxes) // 64)):
        a = amaxes[chunk][:, None]
        s = a / QMAX
        q = np.clip(np.round(centers[None, :] / s), 0, QMAX) * s
        err = ((centers[None, :] - q) ** 2 * counts[None, :]).sum(axis=1)
        k = int(np.argmin(err))
        if err[k] < best_err:
            best_err, best = float(err[k]), float(amaxes[chunk][k])
    return min(best, float(hist.amax))


def compute_amax(hist, method: str = "entropy", percentile: float = 99.99) -> float:
    """``amax`` of one tensor's histogram by ``method`` (one of :data:`METHODS`)."""
    if method == "minmax":
        return amax_minmax(hist)
    if method == "percentile":
        return amax_percentile(hist, percentile)
    if method == "entropy":
        return amax_entropy(hist)
    if method == "mse":
        return amax_mse(hist)
    raise CalibrationError(f"unknown calibration method {method!r}; choose one of "
                           f"{', '.join(METHODS)}")


def weight_amax(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-output-channel ``max |w|`` (axis 0 for Conv OIHW and Gemm with transB=1)."""
    w = np.asarray(w)
    red = tuple(d for d in range(w.ndim) if d != axis)
    return np.abs(w).max(axis=red) if red else np.abs(w)


def quantize_weight(w: np.ndarray, axis: int = 0, qmax: int = QMAX):
    """Symmetric per-channel int8 weights: ``(w_int8, scale float32 per channel)``.

    Narrow range [-qmax, qmax], by default [-127, 127] (TensorRT's weight range); round half
    to even like QuantizeLinear. A smaller ``qmax`` (63: 7 bits) keeps products of int8
    inputs and weights from saturating the int16 sums of CPUs without VNNI.
    """
    scale = amax_to_scale(weight_amax(w, axis), qmax)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def amax_to_scale(amax, qmax: int = QMAX) -> np.ndarray:
    """``amax / qmax`` (127 for int8, 255 for uint8) as float32; an all-zero range gets scale 1
    (every value quantizes to 0)."""
    a = np.asarray(amax, dtype=np.float64)
    s = np.where(a > 0, a / qmax, 1.0)
    return s.astype(np.float32)
