"""Exact intervals for paired accuracy figures: an INT8 file against its FP32 reference on the
same images, or two files against each other.

Every accuracy claim of the study, ``quantize --max-drop`` and ``verify`` is a comparison of
two classifiers on the *same* images, so the per-image outcomes are paired and only the images
on which the two disagree carry information. With ``n`` images, ``losses`` (the reference
right, the other wrong) and ``gains`` (the reference wrong, the other right):

- **Δ top-1** = (gains - losses) / n. Its interval is the *exact conditional* one (the
  interval that goes with McNemar's exact test): given the ``d = gains + losses`` discordant
  images, ``losses ~ Binomial(d, π)``; the Clopper-Pearson interval ``[π_lo, π_hi]`` on π
  maps to ``Δ ∈ [d (1 - 2 π_hi) / n, d (1 - 2 π_lo) / n]``. It contains 0 exactly when the
  two-sided exact McNemar test does not reject at the same level, so "within noise" and "not
  different" are the same statement.
- **Agreement** (images with the reference's top-1) is a plain binomial proportion: the
  Clopper-Pearson interval on the count of agreeing images.
- **Loss rate** (losses / n, the budget's quantity: gains never pay for losses) gets a
  *one-sided* Clopper-Pearson upper bound at a stated confidence.

Clopper-Pearson bounds are computed here by bisection on the binomial tail (log-space sums,
no scipy), which is exact to ~1e-12 and fast for the counts that occur (d up to a few
thousand). Everything is in points (percent of images) where it is a rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

CONFIDENCE = 0.95
METHOD_DELTA = "exact conditional (McNemar) interval: Clopper-Pearson on the discordant images"
METHOD_PROPORTION = "Clopper-Pearson exact interval"
METHOD_BOUND = "one-sided Clopper-Pearson upper bound"


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0.5 <= confidence < 1.0:
        raise InputError(f"confidence must be a number in [0.5, 1), e.g. 0.95; got "
                         f"{confidence!r}")
    return float(confidence)


def _check_counts(k: int, n: int) -> None:
    if n < 1:
        raise InputError(f"an interval needs at least one image; got {n}")
    if not 0 <= k <= n:
        raise InputError(f"a count of {k} out of {n} images is impossible")


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (stable for small tails).

    The log-pmf comes from the ratio of successive terms, log pmf(i+1) - log pmf(i) =
    log((n - i) / (i + 1)) + log(p / (1 - p)), as one cumulative sum; a count above n/2 is
    taken from the other tail, so no sum is longer than n/2 terms."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    if k > n // 2:                  # P(X <= k) = 1 - P(n - X <= n - k - 1), n - X ~ B(n, 1-p)
        return max(0.0, 1.0 - binom_cdf(n - k - 1, n, 1.0 - p))
    i = np.arange(k, dtype=np.float64)
    steps = np.log((n - i) / (i + 1.0)) + (math.log(p) - math.log1p(-p))
    logs = n * math.log1p(-p) + np.concatenate(([0.0], np.cumsum(steps)))
    top = float(logs.max())
    return min(1.0, math.exp(top) * float(np.exp(logs - top).sum()))


def _solve(tail, target: float) -> float:
    """The p in (0, 1) where the decreasing function ``tail(p)`` crosses ``target``."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if tail(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-14:
            break
    return 0.5 * (lo + hi)


def upper_bound(k: int, n: int, alpha: float) -> float:
    """The one-sided Clopper-Pearson upper bound on a rate: the p with P(X <= k | p) = alpha
    (1.0 when k == n)."""
    _check_counts(k, n)
    if k == n:
        return 1.0
    return _solve(lambda p: binom_cdf(k, n, p), alpha)


def lower_bound(k: int, n: int, alpha: float) -> float:
    """The one-sided Clopper-Pearson lower bound: the p with P(X >= k | p) = alpha."""
    _check_counts(k, n)
    if k == 0:
        return 0.0
    # P(X >= k | p) rises with p; solve 1 - P(X <= k-1) = alpha as a falling P(X <= k-1)
    return _solve(lambda p: binom_cdf(k - 1, n, p), 1.0 - alpha)


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> Tuple[float, float]:
    """The two-sided exact interval on a proportion k/n (each tail (1 - confidence) / 2)."""
    alpha = (1.0 - _check_confidence(confidence)) / 2.0
    return lower_bound(k, n, alpha), upper_bound(k, n, alpha)


def mcnemar_p(losses: int, gains: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller binomial tail of ``losses`` among
    the discordant images under π = 1/2 (1.0 with no discordant image)."""
    d = losses + gains
    if d == 0:
        return 1.0
    low = binom_cdf(min(losses, gains), d, 0.5)
    return min(1.0, 2.0 * low)


def needed_images(max_rate_pt: float, confidence: float = CONFIDENCE) -> int:
    """The fewest images for which a file with *no* loss has its upper bound at ``confidence``
    at or under ``max_rate_pt`` points: n >= ln(1 - confidence) / ln(1 - rate)."""
    _check_confidence(confidence)
    rate = max_rate_pt / 100.0
    if not 0.0 < rate < 1.0:
        raise InputError(f"a loss budget must be in (0, 100) points; got {max_rate_pt!r}")
    n = math.ceil(math.log(1.0 - confidence) / math.log1p(-rate))
    while upper_bound(0, n, 1.0 - confidence) > rate:   # guard against rounding at the edge
        n += 1
    return n


@dataclass(frozen=True)
class Paired:
    """Two classifiers on the same ``n`` images: ``losses`` (the reference right, the other
    wrong), ``gains`` (the reference wrong, the other right) and ``disagreements`` (images
    whose two top-1 predictions differ, whatever the label)."""

    n: int
    losses: int
    gains: int
    disagreements: int
    labelled: bool = True     # False: no labels were given, only agreement means anything

    @classmethod
    def from_predictions(cls, reference: Sequence[int], other: Sequence[int],
                         labels: Optional[Sequence[int]] = None) -> "Paired":
        """Counts from per-image top-1 predictions (labels: needed for losses and gains;
        without them both are 0 and only agreement is meaningful)."""
        ref, oth = np.asarray(reference).ravel(), np.asarray(other).ravel()
        if ref.shape != oth.shape:
            raise InputError(f"paired outcomes need the same images: {ref.size} reference and "
                             f"{oth.size} other predictions")
        if ref.size == 0:
            raise InputError("paired outcomes need at least one image; got none")
        losses = gains = 0
        if labels is not None:
            y = np.asarray(labels).ravel()
            if y.shape != ref.shape:
                raise InputError(f"{ref.size} predictions and {y.size} labels")
            r_ok, o_ok = ref == y, oth == y
            losses, gains = int((r_ok & ~o_ok).sum()), int((~r_ok & o_ok).sum())
        return cls(int(ref.size), losses, gains, int((ref != oth).sum()), labels is not None)

    # ------------------------------------------------------------------ Δ top-1
    @property
    def delta_pt(self) -> float:
        return 100.0 * (self.gains - self.losses) / self.n

    def delta_interval(self, confidence: float = CONFIDENCE) -> Tuple[float, float]:
        """Δ top-1 (points), exact conditional interval (see the module docstring)."""
        d = self.losses + self.gains
        if d == 0:
            return 0.0, 0.0
        lo, hi = clopper_pearson(self.losses, d, confidence)
        scale = 100.0 * d / self.n
        return scale * (1.0 - 2.0 * hi), scale * (1.0 - 2.0 * lo)

    def p_value(self) -> float:
        return mcnemar_p(self.losses, self.gains)

    def within_noise(self, confidence: float = CONFIDENCE) -> bool:
        """No difference in top-1 at this confidence: the Δ interval contains 0."""
        lo, hi = self.delta_interval(confidence)
        return lo <= 0.0 <= hi

    # ------------------------------------------------------------------ agreement
    @property
    def agreement_pt(self) -> float:
        return 100.0 * (self.n - self.disagreements) / self.n

    def agreement_interval(self, confidence: float = CONFIDENCE) -> Tuple[float, float]:
        lo, hi = clopper_pearson(self.n - self.disagreements, self.n, confidence)
        return 100.0 * lo, 100.0 * hi

    # ------------------------------------------------------------------ loss rate
    @property
    def loss_pt(self) -> float:
        return 100.0 * self.losses / self.n

    def loss_bound(self, confidence: float = CONFIDENCE) -> float:
        """One-sided upper bound on the loss rate (points) at ``confidence``."""
        return 100.0 * upper_bound(self.losses, self.n, 1.0 - _check_confidence(confidence))

    def disagreement_bound(self, confidence: float = CONFIDENCE) -> float:
        """One-sided upper bound on the rate of changed top-1 predictions (points)."""
        return 100.0 * upper_bound(self.disagreements, self.n,
                                   1.0 - _check_confidence(confidence))

    def record(self, confidence: float = CONFIDENCE) -> dict:
        """The counts, figures and intervals, rounded for a JSON report (the top-1 figures
        are None without labels)."""
        r4 = lambda v: round(float(v), 4)  # noqa: E731
        if not self.labelled:
            return {"images": self.n, "disagreements": self.disagreements,
                    "confidence": confidence, "agreement_pct": r4(self.agreement_pt),
                    "agreement_ci": [r4(v) for v in self.agreement_interval(confidence)],
                    "disagreement_bound_pt": r4(self.disagreement_bound(confidence)),
                    "method": {"agreement": METHOD_PROPORTION, "bound": METHOD_BOUND}}
        return {"images": self.n, "losses": self.losses, "gains": self.gains,
                "disagreements": self.disagreements, "confidence": confidence,
                "top1_delta_pt": r4(self.delta_pt),
                "top1_delta_ci": [r4(v) for v in self.delta_interval(confidence)],
                "p_value": r4(self.p_value()),
                "within_noise": self.within_noise(confidence),
                "agreement_pct": r4(self.agreement_pt),
                "agreement_ci": [r4(v) for v in self.agreement_interval(confidence)],
                "loss_pt": r4(self.loss_pt),
                "loss_bound_pt": r4(self.loss_bound(confidence)),
                "method": {"top1_delta": METHOD_DELTA, "agreement": METHOD_PROPORTION,
                           "loss_bound": METHOD_BOUND}}
