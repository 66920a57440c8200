"""Mixed precision to an accuracy budget: keep the most sensitive layers in float until the
INT8 file is within ``max_drop`` of FP32 on a validation split.

The rule is greedy in sensitivity order (:func:`calibration.sensitivity`, worst first): the
result keeps the first ``k`` layers of the ranking in float, for the smallest ``k`` whose file
is within budget on the validation images. ``k`` is found by trying 0, 1, 2, ... or, by
default, by galloping and bisection over ``k`` (:func:`greedy_exclusion`), which needs a few
evaluations where the linear search needs one per layer. If keeping ``max_excluded`` layers
in float is not enough, it is an error (the budget is unreachable at that price). The drop is in top-1 points against the
FP32 model's top-1 on the labelled validation images (``metric="top1"``), or in points of
disagreement with the FP32 model's top-1 (``metric="agreement"``, labels not needed).

The validation split chooses the layers; a test set then only reports the result (the
shipped one: ``engine.datasets.fashion_mnist("val")``, disjoint from the calibration images
and from the test set). Layers kept in float run at the engine's float precision
(:attr:`calibration.targets.Target.fallback`).

The drop is measured with ONNX Runtime's CPU provider unless ``evaluate`` is given: a
callable ``path -> logits`` of the validation images on the engine that will run the file, or
a list of them, one per engine, when the drop must hold on each (the largest one counts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from engine.runtime import count_option

from .errors import CalibrationArgumentError, CalibrationError
from .methods import METHODS

METRICS = ("top1", "agreement")


@dataclass
class BudgetStep:
    excluded: int           # layers kept in float at this step
    drop: float             # points lost against FP32 on the validation split


@dataclass
class Budget:
    """What the greedy search found: the layers kept in float and each step's drop."""

    max_drop: float
    metric: str
    excluded: List[str] = field(default_factory=list)
    drop: Optional[float] = None
    steps: List[BudgetStep] = field(default_factory=list)
    method: Optional[str] = None      # the calibration method of the file
    methods_tried: Dict[str, List[float]] = field(default_factory=dict)  # method="auto":
                                      # each method's [drop, disagreement] fully INT8

    def record(self) -> dict:
        return {"max_drop": self.max_drop, "metric": self.metric, "drop": self.drop,
                "kept_float": list(self.excluded), "method": self.method,
                "methods_tried": self.methods_tried,
                "steps": [[s.excluded, round(s.drop, 4)] for s in self.steps]}


SEARCHES = ("linear", "bisect")
AUTO = "auto"        # quantize_to_budget(method=AUTO): the method chosen on the validation split


def choose_method(drops_of: Callable[[str], Tuple[float, float]],
                  methods: Sequence[str] = METHODS) -> Tuple[str, Dict[str, List[float]]]:
    """The method whose fully INT8 file loses least on the validation split: smallest drop,
    then least disagreement with FP32 (a finer count where top-1 ties), then the order of
    ``methods``. ``drops_of(method) -> (drop, disagreement)`` in points. Returns the method
    and every method's pair."""
    tried = {m: [round(float(v), 4) for v in drops_of(m)] for m in methods}
    best = min(methods, key=lambda m: (tried[m][0], tried[m][1], methods.index(m)))
    return best, tried


def greedy_exclusion(ranked: Sequence[str], drop_with: Callable[[List[str]], float],
                     max_drop: float, metric: str = "top1",
                     max_excluded: Optional[int] = None, search: str = "linear") -> Budget:
    """Keep the first ``count`` layers of ``ranked`` (worst first) in float, for the smallest
    ``count`` with ``drop_with(kept) <= max_drop``.

    search: ``"linear"`` tries 0, 1, 2, ... and stops at the first count within budget (one
    evaluation per layer kept). ``"bisect"`` tries 0, 1, 2, 4, 8, ... up to the first count
    within budget, then halves the interval between it and the last count over budget: the
    same answer when the drop only falls as layers go back to float, in O(log n) evaluations
    (a noisy drop can make it settle on a count the linear search would pass over). Every
    evaluation is a step of the returned :class:`Budget`, in the order made.
    """
    if search not in SEARCHES:
        raise CalibrationArgumentError(f"search must be one of {', '.join(SEARCHES)}, "
                                       f"got {search!r}")
    limit = len(ranked) if max_excluded is None else min(max_excluded, len(ranked))
    budget = Budget(max_drop, metric)
    drops = {}

    def fits(count):
        kept = list(ranked[:count])
        drops[count] = float(drop_with(kept))
        budget.steps.append(BudgetStep(count, drops[count]))
        return drops[count] <= max_drop

    found = _linear(fits, limit) if search == "linear" else _bisect(fits, limit)
    if found is None:
        raise CalibrationError(
            f"the accuracy budget {max_drop} pt ({metric}) is not met with {limit} layers "
            f"kept in float (drop then: {drops[limit]:.3f} pt); raise the budget or "
            "max_excluded, try another method, or calibrate on more images")
    budget.excluded, budget.drop = list(ranked[:found]), drops[found]
    return budget


def _linear(fits: Callable[[int], bool], limit: int) -> Optional[int]:
    return next((count for count in range(limit + 1) if fits(count)), None)


def _bisect(fits: Callable[[int], bool], limit: int) -> Optional[int]:
    """The smallest count in [0, limit] that fits, assuming fitting is monotone."""
    if fits(0):
        return 0
    if limit == 0:
        return None
    over, count = 0, 1
    while not fits(min(count, limit)):           # gallop: 1, 2, 4, ... limit
        if count >= limit:
            return None
        over, count = min(count, limit), count * 2
    within = min(count, limit)
    while within - over > 1:                     # invariant: over fails, within fits
        middle = (over + within) // 2
        if fits(middle):
            within = middle
        else:
            over = middle
    return within


def drop_points(logits: np.ndarray, reference: np.ndarray, labels: Optional[np.ndarray],
                metric: str) -> float:
    """Points lost by ``logits`` against the FP32 ``reference`` logits on the same images."""
    pred, ref = logits.argmax(1), reference.argmax(1)
    if metric == "agreement":
        return 100.0 - 100.0 * float((pred == ref).mean())
    return 100.0 * float((ref == labels).mean() - (pred == labels).mean())


def onnxruntime_logits(images: np.ndarray, threads: Optional[int] = None,
                       batch: int = 64) -> Callable:
    """``path -> logits`` of ``images`` with ONNX Runtime's CPU provider."""
    def evaluate(path):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: images[i:i + batch]})[0]
                               for i in range(0, len(images), batch)])
    return evaluate


def _evaluators(evaluate, images, threads) -> List[Callable]:
    """The ``path -> logits`` callables the drop is measured with (ONNX Runtime by default)."""
    if evaluate is None:
        return [onnxruntime_logits(images, threads)]
    return list(evaluate) if isinstance(evaluate, (list, tuple)) else [evaluate]


def worst_drop(evaluators: Sequence[Callable], references: Sequence[np.ndarray], path,
               labels: Optional[np.ndarray], metric: str) -> float:
    """The largest drop of ``path`` over the engines, each against its own FP32 logits: a file
    that will run on several engines must hold the budget on each."""
    return max(drop_points(e(path), ref, labels, metric)
               for e, ref in zip(evaluators, references))


def _check(max_drop, metric, labels, images, max_excluded, search, method):
    if method != AUTO and method not in METHODS:
        raise CalibrationArgumentError(f"method must be one of {', '.join(METHODS)} or "
                                       f"{AUTO!r}, got {method!r}")
    if search not in SEARCHES:
        raise CalibrationArgumentError(f"search must be one of {', '.join(SEARCHES)}, "
                                       f"got {search!r}")
    if metric not in METRICS:
        raise CalibrationArgumentError(f"metric must be one of {', '.join(METRICS)}, "
                                       f"got {metric!r}")
    if not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 100:
        raise CalibrationArgumentError(f"max_drop must be a number of points in [0, 100], got "
                                       f"{max_drop!r}")
    if metric == "top1" and labels is None:
        raise CalibrationArgumentError("metric='top1' needs the validation labels; pass "
                                       "val_labels, or use metric='agreement'")
    if labels is not None and len(labels) != len(images):
        raise CalibrationArgumentError(f"{len(images)} validation images and {len(labels)} "
                                       "labels")
    count_option("max_excluded", max_excluded, minimum=0)


def quantize_to_budget(onnx_in, onnx_out, val_images: np.ndarray,
                       val_labels: Optional[np.ndarray] = None, max_drop: float = 0.1,
                       metric: str = "top1", data=None, statistics=None,
                       method: str = "percentile", sensitivity_images: int = 64,
                       max_excluded: Optional[int] = None,
                       evaluate: Optional[Callable] = None, threads: Optional[int] = None,
                       search: str = "bisect", **options):
    """Write ``onnx_out`` with the fewest sensitive layers kept in float that holds the drop
    on ``val_images`` within ``max_drop`` points (see the module docstring).

    data / statistics: the calibration source or its statistics (the ranking reads ``data``,
    so give it either way); method: a calibration method, or ``"auto"``: the one whose fully
    INT8 file loses least on the validation split (:func:`choose_method`); search: how the count of layers kept in float is found
    (:func:`greedy_exclusion`; bisect by default: a few evaluations instead of one per layer);
    options: the rest of :func:`calibration.quantize` (target, exclude, percentile, ...).
    Returns the chosen file's :class:`QuantizeResult`, with ``budget`` (a :class:`Budget`)
    set; the budget is also recorded in the file's calibration metadata.
    """
    from .graph import load_fp32, plan_quantization
    from .qdq import quantize
    from .ranking import sensitivity
    from .stats import collect_statistics

    val_images = np.ascontiguousarray(val_images, np.float32)
    _check(max_drop, metric, val_labels, val_images, max_excluded, search, method)
    if data is None:
        raise CalibrationError("quantize_to_budget ranks layers on the calibration images: "
                               "pass data=... (and statistics=... to reuse a pass)")
    proto = load_fp32(onnx_in)
    evaluators = _evaluators(evaluate, val_images, threads)
    references = [e(onnx_in) for e in evaluators]
    num_images = options.pop("num_images", None)
    batch_size = options.get("batch_size", 32)
    if statistics is None:
        statistics = collect_statistics(proto, data, num_images=num_images,
                                        batch_size=batch_size, threads=threads)
    plan = plan_quantization(proto, options.get("exclude", ()),
                             quantize_gemm=options.get("quantize_gemm", False))
    exclude = list(options.pop("exclude", ()))
    out = Path(onnx_out)
    trial = out.with_name(f".{out.name}.budget-trial.onnx")   # each step's file, until one fits
    tried = {}
    if method == AUTO:
        def drops_of(name):
            quantize(onnx_in, trial, data=data, statistics=statistics, method=name,
                     exclude=exclude, threads=threads, **options)
            return (worst_drop(evaluators, references, trial, val_labels, metric),
                    worst_drop(evaluators, references, trial, val_labels, "agreement"))
        try:
            method, tried = choose_method(drops_of)
        finally:
            trial.unlink(missing_ok=True)
    amax = statistics.amax(method, options.get("percentile", 99.99), names=plan.tensors)
    ranking = sensitivity(proto, data, amax=plan.group_amax(amax), plan=plan,
                          num_images=sensitivity_images, batch_size=batch_size,
                          threads=threads)
    written = {}

    def write_trial(kept):
        # data: read again only by options that need it (bias_correction)
        written["kept"] = list(kept)
        written["result"] = quantize(onnx_in, trial, data=data, statistics=statistics,
                                     method=method, exclude=exclude + list(kept),
                                     threads=threads, **options)

    def drop_with(kept):
        write_trial(kept)
        return worst_drop(evaluators, references, trial, val_labels, metric)

    try:
        budget = greedy_exclusion([r.node for r in ranking], drop_with, max_drop, metric,
                                  max_excluded, search)
        if written["kept"] != budget.excluded:   # bisection's last trial was over budget
            write_trial(budget.excluded)
        budget.method, budget.methods_tried = method, tried
        _publish_with_budget(trial, out, budget)
    finally:
        trial.unlink(missing_ok=True)
    res = written["result"]
    res.path, res.budget = out, budget
    return res


def _publish_with_budget(trial: Path, out: Path, budget: Budget) -> None:
    """Write the chosen trial file to ``out`` (atomically), its budget in the calibration
    record."""
    import json
    import onnx
    from engine.fileio import atomic_path
    from engine.onnxmeta import META_CALIBRATION, load_onnx, metadata_props, set_metadata
    proto = load_onnx(trial)
    record = json.loads(metadata_props(proto)[META_CALIBRATION])
    record["budget"] = budget.record()
    set_metadata(proto, {META_CALIBRATION: json.dumps(record)})
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
