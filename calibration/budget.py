"""Mixed precision to an accuracy budget with a stated confidence: keep the most sensitive
layers in float until the INT8 file's loss on a validation split is, at ``confidence``, at
most ``max_drop`` points.

**What is counted.** A loss is an image the FP32 model gets right and the INT8 file gets wrong
(``metric="top1"``), or, without labels, an image whose INT8 top-1 differs from FP32's
(``metric="agreement"``). Gains (FP32 wrong, INT8 right) are not netted against losses: a file
that flips 60 images each way has lost 60 images its users relied on, and a budget on net
top-1 would read it as 0.00.

**What is held to the budget.** Not the observed loss rate but its one-sided Clopper-Pearson
upper bound at ``confidence`` (default 0.95; :mod:`engine.intervals`): with ``n`` validation
images and ``L`` losses, the rate ``p`` for which ``P(X <= L | n, p) = 1 - confidence``.
The published file is one whose loss is at most ``max_drop`` points with that confidence on
the images the split stands for, not merely on the split. A split too small to show the
budget even with no loss at all (``n < ln(1 - confidence) / ln(1 - max_drop / 100)``, e.g.
2,995 images for 0.1 pt at 95 %) is refused before anything runs, with the size it would
need; a budget not met with ``max_excluded`` layers in float is an error too. Neither ever
publishes a file. (The search tries several counts on the same split and keeps the first that
passes, so the guarantee is per count; ``benchmarks/RESULTS.md`` measures its coverage out of
sample.)

**The search.** Greedy in sensitivity order (:func:`calibration.sensitivity`, worst first):
the result keeps the first ``k`` layers of the ranking in float, for the smallest ``k`` whose
file is within budget. ``k`` is found by trying 0, 1, 2, ... or, by default, by galloping and
bisection over ``k`` (:func:`greedy_exclusion`), a few evaluations where the linear search
needs one per layer.

The validation split chooses the layers; a test set then only reports the result (the
shipped one: ``engine.datasets.fashion_mnist("val")``, 5,000 train images no shipped subject
was trained on, disjoint from the calibration images and from the test set). A user's split
must likewise hold no test image and no image the model was trained on, or the bound is
optimistic. Layers kept in float run at the engine's float precision
(:attr:`calibration.targets.Target.fallback`).

The loss is measured with ONNX Runtime's CPU provider unless ``evaluate`` is given: a
callable ``path -> logits`` of the validation images on the engine that will run the file, or
a list of them, one per engine, when the budget must hold on each (the largest bound counts).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from engine.intervals import CONFIDENCE, METHOD_BOUND, Paired, needed_images
from engine.runtime import count_option

from .errors import CalibrationArgumentError, CalibrationError
from .methods import METHODS
from .options import BudgetOptions, QuantizeOptions
from .targets import DEFAULT_TARGET, get_target, quantizes_head

METRICS = ("top1", "agreement")


@dataclass
class BudgetStep:
    excluded: int                   # layers kept in float at this step
    bound: float                    # the figure held to the budget (points): the loss's upper
                                    # bound at the budget's confidence
    loss: Optional[float] = None    # observed loss rate (points)
    losses: Optional[int] = None    # images lost (worst engine)
    outcome: Optional[Paired] = field(default=None, repr=False)  # the paired counts behind it


@dataclass
class Budget:
    """What the greedy search found: the layers kept in float, the chosen file's loss and
    its bound, and each step's."""

    max_drop: float
    metric: str
    confidence: float = CONFIDENCE
    images: Optional[int] = None      # validation images
    layers: Optional[int] = None      # layers the search could keep float (the ranking's)
    excluded: List[str] = field(default_factory=list)
    bound: Optional[float] = None     # upper bound of the loss (points) at ``confidence``
    loss: Optional[float] = None      # observed loss rate (points)
    losses: Optional[int] = None
    steps: List[BudgetStep] = field(default_factory=list)
    method: Optional[str] = None      # the calibration method of the file
    methods_tried: Dict[str, List[float]] = field(default_factory=dict)  # method="auto":
                                      # each method's [bound, disagreement] fully INT8
    outcome: Optional[Paired] = field(default=None, repr=False)  # the chosen file's paired
                                      # counts on the split (worst engine)

    def record(self) -> dict:
        """The budget as the file's calibration record and ``quantize --json`` give it; with
        the chosen file's paired figures on the split (Δ top-1 and agreement with their 95%
        intervals: :meth:`engine.intervals.Paired.record`) under ``validation``."""
        return {"max_drop": self.max_drop, "metric": self.metric,
                "validation": None if self.outcome is None else self.outcome.record(),
                "confidence": self.confidence, "images": self.images,
                "loss_pt": _r4(self.loss), "loss_bound_pt": _r4(self.bound),
                "losses": self.losses, "bound_method": METHOD_BOUND,
                "layers": self.layers, "kept_float": list(self.excluded),
                "method": self.method,
                "methods_tried": self.methods_tried,
                "steps": [[s.excluded, _r4(s.bound), _r4(s.loss), s.losses]
                          for s in self.steps]}

    @property
    def drop(self) -> Optional[float]:
        """The observed loss (points): images lost, not net top-1 (the public name kept)."""
        return self.loss

    def summary(self) -> str:
        """One line: the file's loss, its bound and what it was held to."""
        what = "images lost (FP32 right, INT8 wrong)" if self.metric == "top1" else \
            "images whose top-1 changed"
        text = (f"{self.losses} of {self.images} validation {what}: loss {self.loss:.3f} pt, "
                f"{100 * self.confidence:g}% upper bound {self.bound:.3f} pt <= budget "
                f"{self.max_drop:g} pt, with {len(self.excluded)} layers kept in float")
        if self.layers and len(self.excluded) == self.layers:
            text += (" (all of them: on this split only the float graph can be shown to meet "
                     "the budget; a larger split or budget lets INT8 layers in)")
        return text


def _r4(v):
    return None if v is None else round(float(v), 4)


SEARCHES = ("linear", "bisect")
AUTO = "auto"        # quantize_to_budget(method=AUTO): the method chosen on the validation split


def choose_method(drops_of: Callable[[str], Tuple[float, float]],
                  methods: Sequence[str] = METHODS) -> Tuple[str, Dict[str, List[float]]]:
    """The method whose fully INT8 file loses least on the validation split: smallest loss
    bound, then least disagreement with FP32 (a finer count where the bound ties), then the
    order of ``methods``. ``drops_of(method) -> (bound, disagreement)`` in points. Returns
    the method and every method's pair."""
    tried = {m: [round(float(v), 4) for v in drops_of(m)] for m in methods}
    best = min(methods, key=lambda m: (tried[m][0], tried[m][1], methods.index(m)))
    return best, tried


Measured = Union[float, Paired]


def as_step(count: int, value: Measured, confidence: float, metric: str = "top1") -> BudgetStep:
    """A search step from what ``drop_with`` returned: a :class:`engine.intervals.Paired`
    (the upper bound, at ``confidence``, of its losses for ``"top1"`` or of its changed
    predictions for ``"agreement"`` is held to the budget) or a number of points (held as
    it is)."""
    if isinstance(value, Paired):
        if metric == "agreement":
            return BudgetStep(count, value.disagreement_bound(confidence),
                              100.0 - value.agreement_pt, value.disagreements, value)
        return BudgetStep(count, value.loss_bound(confidence), value.loss_pt, value.losses,
                          value)
    return BudgetStep(count, float(value))


def greedy_exclusion(ranked: Sequence[str], drop_with: Callable[[List[str]], Measured],
                     max_drop: float, metric: str = "top1",
                     max_excluded: Optional[int] = None, search: str = "linear",
                     confidence: float = CONFIDENCE) -> Budget:
    """Keep the first ``count`` layers of ``ranked`` (worst first) in float, for the smallest
    ``count`` whose ``drop_with(kept)`` is within ``max_drop``: a :class:`Paired` (its loss's
    upper bound at ``confidence`` is compared) or a number of points.

    search: ``"linear"`` tries 0, 1, 2, ... and stops at the first count within budget (one
    evaluation per layer kept). ``"bisect"`` tries 0, 1, 2, 4, 8, ... up to the first count
    within budget, then halves the interval between it and the last count over budget: the
    same answer when the loss only falls as layers go back to float, in O(log n) evaluations
    (a noisy loss can make it settle on a count the linear search would pass over). Every
    evaluation is a step of the returned :class:`Budget`, in the order made.
    """
    if search not in SEARCHES:
        raise CalibrationArgumentError(f"search must be one of {', '.join(SEARCHES)}, "
                                       f"got {search!r}")
    limit = len(ranked) if max_excluded is None else min(max_excluded, len(ranked))
    budget = Budget(max_drop, metric, confidence, layers=len(ranked))
    steps: Dict[int, BudgetStep] = {}

    def fits(count):
        steps[count] = as_step(count, drop_with(list(ranked[:count])), confidence, metric)
        budget.steps.append(steps[count])
        return steps[count].bound <= max_drop

    found = _linear(fits, limit) if search == "linear" else _bisect(fits, limit)
    if found is None:
        last = steps[limit]
        seen = "" if last.losses is None else f"{last.losses} images lost, "
        raise CalibrationError(
            f"the accuracy budget {max_drop} pt ({metric}, {100 * confidence:g}% upper bound) "
            f"is not met with {limit} layers kept in float ({seen}bound {last.bound:.3f} pt); "
            "no file was written. Raise the budget or max_excluded, try another method, "
            "calibrate on more images, or give a larger validation split")
    chosen = steps[found]
    budget.excluded, budget.bound = list(ranked[:found]), chosen.bound
    budget.loss, budget.losses, budget.outcome = chosen.loss, chosen.losses, chosen.outcome
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


def paired_outcome(logits: np.ndarray, reference: np.ndarray,
                   labels: Optional[np.ndarray]) -> Paired:
    """``logits`` against the FP32 ``reference`` logits on the same images, per image
    (:class:`engine.intervals.Paired`: losses and gains need ``labels``; changed top-1
    predictions do not)."""
    return Paired.from_predictions(reference.argmax(1), logits.argmax(1), labels)


def counted(outcome: Paired, metric: str) -> int:
    """The images a budget counts as lost: FP32 right and INT8 wrong (``"top1"``), or a
    changed top-1 (``"agreement"``)."""
    return outcome.disagreements if metric == "agreement" else outcome.losses


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


def worst_outcome(evaluators: Sequence[Callable], references: Sequence[np.ndarray], path,
                  labels: Optional[np.ndarray], metric: str) -> Paired:
    """The outcome of ``path`` on the engine where it loses most (:func:`counted`), each
    engine against its own FP32 logits: a file that will run on several engines must hold
    the budget on each."""
    return max((paired_outcome(e(path), ref, labels) for e, ref in zip(evaluators, references)),
               key=lambda p: (counted(p, metric), p.disagreements))


def _check(max_drop, metric, labels, images, max_excluded, search, method, confidence):
    if method != AUTO and method not in METHODS:
        raise CalibrationArgumentError(f"method must be one of {', '.join(METHODS)} or "
                                       f"{AUTO!r}, got {method!r}")
    if search not in SEARCHES:
        raise CalibrationArgumentError(f"search must be one of {', '.join(SEARCHES)}, "
                                       f"got {search!r}")
    if metric not in METRICS:
        raise CalibrationArgumentError(f"metric must be one of {', '.join(METRICS)}, "
                                       f"got {metric!r}")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) \
            or not 0 < max_drop < 100:
        raise CalibrationArgumentError(f"max_drop must be a number of points in (0, 100), got "
                                       f"{max_drop!r} (no finite split can show a loss of "
                                       "exactly 0 with a confidence; give e.g. 0.1)")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0.5 <= confidence < 1:
        raise CalibrationArgumentError(f"confidence must be a number in [0.5, 1), e.g. 0.95; "
                                       f"got {confidence!r}")
    if metric == "top1" and labels is None:
        raise CalibrationArgumentError("metric='top1' needs the validation labels; pass "
                                       "val_labels, or use metric='agreement'")
    if labels is not None and len(labels) != len(images):
        raise CalibrationArgumentError(f"{len(images)} validation images and {len(labels)} "
                                       "labels")
    count_option("max_excluded", max_excluded, minimum=0)
    check_reachable(max_drop, confidence, len(images))


def check_reachable(max_drop: float, confidence: float, images: int) -> None:
    """Refuse a budget that no file can be shown to meet on ``images`` validation images:
    even with no loss at all the upper bound would be over ``max_drop``."""
    need = needed_images(max_drop, confidence)
    if images < need:
        best = Paired(max(images, 1), 0, 0, 0).loss_bound(confidence) if images else 100.0
        raise CalibrationArgumentError(
            f"a budget of {max_drop:g} pt at {100 * confidence:g}% confidence cannot be met on "
            f"{images} validation images: even a file that loses no image has an upper bound "
            f"of {best:.3f} pt there. It needs at least {need} validation images; give a "
            "larger split (--val), a larger --max-drop, or a lower --confidence")


def quantize_to_budget(onnx_in, onnx_out, val_images: np.ndarray,
                       val_labels: Optional[np.ndarray] = None, *, data=None, statistics=None,
                       evaluate: Optional[Callable] = None,
                       budget: Optional[BudgetOptions] = None,
                       options: Optional[QuantizeOptions] = None, **overrides):
    """Write ``onnx_out`` with the fewest sensitive layers kept in float whose loss on
    ``val_images`` is at most ``max_drop`` points at ``confidence`` (one-sided upper bound;
    see the module docstring).

    data / statistics: the calibration source or its statistics (the ranking reads ``data``,
    so give it either way). budget: a :class:`calibration.BudgetOptions` (max_drop, metric,
    method (or ``"auto"``: the one whose fully INT8 file loses least on the validation
    split, :func:`choose_method`), max_excluded, search (:func:`greedy_exclusion`),
    confidence); options: a :class:`calibration.QuantizeOptions` for every file written
    (target, exclude, percentile, sensitivity_images, threads, ...); ``overrides``: any
    option of either by keyword. Returns the chosen file's :class:`QuantizeResult`, with
    ``budget`` (a :class:`Budget`) set; the budget is also recorded in the file's
    calibration metadata.
    """
    from .graph import load_fp32, plan_quantization
    from .qdq import quantize
    from .ranking import sensitivity
    from .stats import collect_statistics

    b, o = BudgetOptions.split(budget, options, **overrides)
    val_images = np.ascontiguousarray(val_images, np.float32)
    _check(b.max_drop, b.metric, val_labels, val_images, b.max_excluded, b.search, b.method,
           b.confidence)
    if o.auto_exclude:
        raise CalibrationArgumentError("quantize_to_budget chooses the layers kept in float "
                                       "itself; drop auto_exclude (or call quantize with it, "
                                       "without a budget)")
    if data is None:
        raise CalibrationError("quantize_to_budget ranks layers on the calibration images: "
                               "pass data=... (and statistics=... to reuse a pass)")
    proto = load_fp32(onnx_in)
    evaluators = _evaluators(evaluate, val_images, o.threads)
    references = [e(onnx_in) for e in evaluators]
    if statistics is None:
        statistics = collect_statistics(proto, data, num_images=o.num_images,
                                        batch_size=o.batch_size, threads=o.threads)
    head = quantizes_head(get_target(o.target or DEFAULT_TARGET), o.quantize_gemm)
    plan = plan_quantization(proto, o.exclude, quantize_gemm=head)
    out = Path(onnx_out)
    trial = out.with_name(f".{out.name}.budget-trial.onnx")   # each step's file, until one fits
    method, tried = b.method, {}
    if method == AUTO:
        def drops_of(name):
            quantize(onnx_in, trial, data=data, statistics=statistics,
                     options=replace(o, method=name))
            worst = as_step(0, worst_outcome(evaluators, references, trial, val_labels,
                                             b.metric), b.confidence, b.metric)
            return worst.bound, 100.0 - worst.outcome.agreement_pt
        try:
            method, tried = choose_method(drops_of)
        finally:
            trial.unlink(missing_ok=True)
    amax = statistics.amax(method, o.percentile, names=plan.tensors)
    ranking = sensitivity(proto, data, amax=plan.group_amax(amax), plan=plan,
                          num_images=o.sensitivity_images, batch_size=o.batch_size,
                          threads=o.threads)
    written = {}

    def write_trial(kept):
        # data: read again only by options that need it (bias_correction)
        written["kept"] = list(kept)
        written["result"] = quantize(onnx_in, trial, data=data, statistics=statistics,
                                     options=replace(o, method=method,
                                                     exclude=o.exclude + tuple(kept)))

    def drop_with(kept):
        write_trial(kept)
        return worst_outcome(evaluators, references, trial, val_labels, b.metric)

    try:
        found = greedy_exclusion([r.node for r in ranking], drop_with, b.max_drop, b.metric,
                                 b.max_excluded, b.search, b.confidence)
        found.images = len(val_images)
        if written["kept"] != found.excluded:    # bisection's last trial was over budget
            write_trial(found.excluded)
        found.method, found.methods_tried = method, tried
        _publish_with_budget(trial, out, found)
    finally:
        trial.unlink(missing_ok=True)
    res = written["result"]
    res.path, res.budget = out, found
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
