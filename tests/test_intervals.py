"""The paired intervals behind every accuracy figure (engine.intervals), checked against scipy
(an independent implementation: beta quantiles, not our binomial-tail bisection), and the
study's use of them: the "best INT8" rule and the figure."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as scipy_stats  # in the test extra

from engine.errors import InputError
from engine.intervals import (Paired, binom_cdf, clopper_pearson, mcnemar_p, needed_images,
                              upper_bound)


def planted(n, losses, gains, both_wrong=0, seed=0):
    """Labels and two prediction vectors over ``n`` images with exactly ``losses`` images the
    reference gets right and the other wrong, ``gains`` the other way round, and
    ``both_wrong`` where both are wrong with the same prediction; shuffled."""
    labels = np.zeros(n, np.int64)
    ref, other = labels.copy(), labels.copy()
    i = 0
    for count, r, o in ((losses, 0, 1), (gains, 1, 0), (both_wrong, 2, 2)):
        ref[i:i + count], other[i:i + count] = r, o
        i += count
    order = np.random.default_rng(seed).permutation(n)
    return labels[order], ref[order], other[order]


def scipy_cp(k, n, alpha):
    """Clopper-Pearson from beta quantiles (the textbook form)."""
    lo = 0.0 if k == 0 else scipy_stats.beta.ppf(alpha / 2, k, n - k + 1)
    hi = 1.0 if k == n else scipy_stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
    return lo, hi


@pytest.mark.parametrize("n, losses, gains", [(10000, 37, 12), (5000, 0, 0), (5000, 3, 0),
                                               (10000, 60, 60), (200, 15, 40), (1000, 0, 9)])
def test_planted_outcomes_match_scipy(n, losses, gains):
    labels, ref, other = planted(n, losses, gains, both_wrong=5)
    p = Paired.from_predictions(ref, other, labels)
    assert (p.n, p.losses, p.gains, p.disagreements) == (n, losses, gains, losses + gains)
    assert p.delta_pt == pytest.approx(100 * (gains - losses) / n)

    d = losses + gains
    lo, hi = p.delta_interval(0.95)
    if d:
        # exact conditional interval: Clopper-Pearson on losses among the d discordant images
        plo, phi = scipy_cp(losses, d, 0.05)
        assert lo == pytest.approx(100 * d * (1 - 2 * phi) / n, abs=1e-9)
        assert hi == pytest.approx(100 * d * (1 - 2 * plo) / n, abs=1e-9)
        expected_p = scipy_stats.binomtest(losses, d, 0.5).pvalue
        assert p.p_value() == pytest.approx(expected_p, rel=1e-9)
        # "within noise" is the exact McNemar test not rejecting at 5%
        assert p.within_noise() == (scipy_stats.binomtest(losses, d, 0.5).pvalue >= 0.05) \
            or abs(expected_p - 0.05) < 1e-6
    else:
        assert (lo, hi) == (0.0, 0.0) and p.within_noise()

    alo, ahi = p.agreement_interval(0.95)
    slo, shi = scipy_cp(n - d, n, 0.05)
    assert (alo, ahi) == (pytest.approx(100 * slo, abs=1e-9), pytest.approx(100 * shi, abs=1e-9))

    bound = scipy_stats.beta.ppf(0.95, losses + 1, n - losses)
    assert p.loss_bound(0.95) == pytest.approx(100 * bound, abs=1e-9)


def test_zero_loss_bound_by_hand():
    """With no loss the bound has a closed form, 1 - alpha^(1/n): 0.0599 pt on 5,000 images."""
    assert Paired(5000, 0, 0, 0).loss_bound() == pytest.approx(100 * (1 - 0.05 ** (1 / 5000)))
    assert Paired(5000, 0, 0, 0).loss_bound() == pytest.approx(0.0599, abs=1e-4)
    assert upper_bound(0, 1, 0.05) == pytest.approx(0.95)


def test_needed_images_is_the_smallest_split_that_can_show_the_budget():
    for pt, conf in ((0.1, 0.95), (0.3, 0.95), (1.0, 0.99), (0.05, 0.9)):
        n = needed_images(pt, conf)
        assert upper_bound(0, n, 1 - conf) <= pt / 100 < upper_bound(0, n - 1, 1 - conf)
    assert needed_images(0.1, 0.95) == 2995


def test_a_significant_loss_is_not_within_noise():
    """60 losses and 20 gains on 10k images: McNemar's exact p is about 1e-5; a -0.4 pt Δ
    whose interval excludes 0."""
    labels, ref, other = planted(10000, 60, 20)
    p = Paired.from_predictions(ref, other, labels)
    lo, hi = p.delta_interval()
    assert hi < 0 and not p.within_noise() and p.p_value() < 1e-4
    assert mcnemar_p(20, 60) == pytest.approx(p.p_value())


def test_binomial_tail_against_scipy():
    for k, n, q in ((0, 10, 0.3), (3, 50, 0.01), (49, 50, 0.99), (500, 10000, 0.05)):
        assert binom_cdf(k, n, q) == pytest.approx(scipy_stats.binom.cdf(k, n, q), rel=1e-9)


@pytest.mark.parametrize("call, match", [
    (lambda: Paired.from_predictions([0, 1], [0], [0, 1]), "same images"),
    (lambda: Paired.from_predictions([], [], []), "at least one image"),
    (lambda: Paired.from_predictions([0, 1], [0, 1], [0]), "labels"),
    (lambda: clopper_pearson(1, 10, confidence=1.0), "confidence"),
    (lambda: clopper_pearson(11, 10), "impossible"),
    (lambda: needed_images(0.0), "in \\(0, 100\\)")])
def test_bad_arguments_say_what_to_give(call, match):
    with pytest.raises(InputError, match=match):
        call()


# ------------------------------------------------------------------ the study's use of them
def _row(engine, top1, latency, key, precision="int8"):
    return {"engine": engine, "precision": precision, "top1": top1, "latency_ms": latency,
            "predictions": key, "quantizer": "ours", "method": key, "target": "tensorrt"}


def test_best_int8_is_the_fastest_row_indistinguishable_from_the_most_accurate():
    """Planted: A is the most accurate; B is 1 image worse (not distinguishable) and the
    fastest; C is faster than A but 80 images worse (distinguishable). The rule picks B;
    with B gone it picks A, not the faster but worse C."""
    from engine.study import choose_best
    n = 5000
    labels = np.zeros(n, np.int64)
    a = labels.copy()
    b = labels.copy()
    b[:1] = 1
    c = labels.copy()
    c[100:180] = 1
    preds = {"a": a, "b": b, "c": c}
    rows = [_row("openvino", 100.0, 3.0, "a"), _row("openvino", 99.98, 1.0, "b"),
            _row("openvino", 98.4, 2.0, "c"), _row("openvino", 100.0, 0.5, None, "fp32")]
    assert choose_best(rows, preds, labels)["predictions"] == "b"
    assert choose_best([rows[0], rows[2]], preds, labels)["predictions"] == "a"


def test_pareto_figure_error_bars_markers_and_ticks():
    """Each row with an interval gets an error bar spanning it on the top-1 axis; OpenVINO
    FP32 and BF16 get different markers; the log axis's tick labels do not overlap."""
    pytest.importorskip("matplotlib")
    from engine.study import pareto_figure
    base = {"engine": "torch", "precision": "fp32", "method": "-", "quantizer": "-",
            "target": "-", "top1": 91.0, "latency_ms": 4.1, "latency_ms_299": None}
    rows = [base,
            {**base, "engine": "openvino", "precision": "fp32", "latency_ms": 3.2,
             "top1_delta_ci": [-0.05, 0.05]},
            {**base, "engine": "openvino", "precision": "bf16", "latency_ms": 3.6,
             "top1": 90.9, "top1_delta_ci": [-0.3, 0.1]},
            {**base, "engine": "openvino", "precision": "int8", "quantizer": "ours",
             "method": "mse", "target": "openvino", "latency_ms": 3.0, "top1": 90.5,
             "top1_delta_ci": [-0.8, -0.2]}]
    fig = pareto_figure(rows)
    ax = fig.axes[0]
    # error bars: one vertical segment per row with an interval, from FP32 + lo to FP32 + hi
    segments = [seg for coll in ax.collections if hasattr(coll, "get_segments")
                for seg in coll.get_segments()]
    spans = sorted((round(float(s[0][1]), 3), round(float(s[1][1]), 3)) for s in segments)
    assert spans == sorted([(90.95, 91.05), (90.7, 91.1), (90.2, 90.8)])
    # markers: fp32 and bf16 differ
    handles, names = ax.get_legend_handles_labels()
    by_name = dict(zip(names, handles))
    fp32, bf16 = by_name["openvino fp32"], by_name["openvino bf16"]
    assert (fp32.get_paths()[0].vertices.tolist() != bf16.get_paths()[0].vertices.tolist())
    # tick labels: plain numbers whose boxes do not overlap
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() + ax.get_xminorticklabels()
              if t.get_visible() and t.get_text()]
    assert len(labels) >= 2 and all("times" not in t.get_text() for t in labels)
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)))
