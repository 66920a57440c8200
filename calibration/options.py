"""What a calibration is run with: :class:`QuantizeOptions` (every option of
:func:`calibration.quantize` and its default) and :class:`BudgetOptions` (what
:func:`calibration.quantize_to_budget` adds), each default in one place. The CLI
(``inception-engine quantize``) takes its defaults from here.

The call's inputs are not options: the models (``onnx_in``, ``onnx_out``), the calibration
source (``data``, ``statistics`` or ``scales``) and where a TensorRT cache goes (``cache``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple

from engine.intervals import CONFIDENCE
from engine.runtime import count_option

from .bias import DEFAULT_IMAGES as BIAS_IMAGES
from .errors import CacheError, CalibrationArgumentError

# the deprecated way to name the Q/DQ layout; QuantizeOptions.of maps it onto ``target``
DEPRECATED_UNSIGNED_RELU = "unsigned_relu"


def _names(cls) -> Tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def unknown_options(given, *kinds) -> None:
    """An InputError naming the keywords of ``given`` that no dataclass of ``kinds`` has,
    with the valid names."""
    valid = set().union(*(_names(k) for k in kinds))
    if kinds and kinds[0] is QuantizeOptions:
        valid.add(DEPRECATED_UNSIGNED_RELU)
    unknown = sorted(set(given) - valid)
    if unknown:
        raise CalibrationArgumentError(
            f"unknown calibration option(s) {', '.join(unknown)}; the options are: "
            f"{', '.join(sorted(valid))}")


@dataclass(frozen=True)
class QuantizeOptions:
    """The options of one :func:`calibration.quantize` call.

    method: minmax | percentile | entropy | mse (``calibration.METHODS``); percentile: for
    ``method="percentile"``. exclude: node names or module paths kept in float.
    num_images / batch_size: the first N calibration images (None: all), in batches of
    that many. auto_exclude: also keep the K layers of largest output error in float,
    ranked on the first ``sensitivity_images`` images. quantize_gemm: the head in int8
    (None: the target's choice). target: the engine the file is for
    (``calibration.targets.TARGETS``; None: ``DEFAULT_TARGET``). bias_correction: shift
    each conv's bias on the first ``bias_images`` images (None: where it was measured to
    help this target and method, when the data can be read again). cache_version: the
    TensorRT version in a cache's header (None: the scales' own, else the default).
    threads: ONNX Runtime threads (None: its default). progress: print progress.
    check: run the ONNX checker on the file before it is written.
    """

    method: str = "entropy"
    exclude: Tuple[str, ...] = ()
    percentile: float = 99.99
    num_images: Optional[int] = None
    batch_size: int = 32
    auto_exclude: int = 0
    sensitivity_images: int = 64
    quantize_gemm: Optional[bool] = None
    target: Optional[str] = None
    bias_correction: Optional[bool] = None
    bias_images: int = BIAS_IMAGES
    cache_version: Optional[str] = None
    threads: Optional[int] = None
    progress: bool = False
    check: bool = True

    @classmethod
    def of(cls, options: Optional["QuantizeOptions"] = None, **changes) -> "QuantizeOptions":
        """``options`` (default: the defaults) with ``changes``, checked. An unknown name is
        an InputError listing the options; the deprecated ``unsigned_relu`` is accepted
        here, and only here, as the target it stands for (True: openvino, False:
        tensorrt; contradicting a given target is an error)."""
        if options is not None and not isinstance(options, cls):
            raise CalibrationArgumentError(
                f"options must be a calibration.QuantizeOptions, got {type(options).__name__}; "
                "pass the options by keyword (method=..., exclude=...) or as "
                "QuantizeOptions(...)")
        unknown_options(changes, cls)
        base = {f.name: getattr(options, f.name) if options else f.default
                for f in fields(cls)}
        unsigned_relu = changes.pop(DEPRECATED_UNSIGNED_RELU, None)
        base.update(changes)
        if unsigned_relu is not None:
            from .targets import resolve_target
            base["target"] = resolve_target(base["target"], unsigned_relu).name
        exclude = base["exclude"]
        base["exclude"] = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
        made = cls(**base)
        made.validate()
        return made

    def validate(self) -> None:
        """Each option in its range, or an InputError naming it."""
        from .data import check_num_images
        from .methods import METHODS, check_percentile
        from .targets import get_target
        if self.method not in METHODS:
            raise CalibrationArgumentError(f"unknown calibration method {self.method!r}; "
                                           f"choose one of {', '.join(METHODS)}")
        check_percentile(self.percentile)
        check_num_images(self.num_images)
        count_option("batch_size", self.batch_size, allow_none=False)
        count_option("auto_exclude", self.auto_exclude, minimum=0, allow_none=False)
        count_option("sensitivity_images", self.sensitivity_images, allow_none=False)
        count_option("threads", self.threads)
        count_option("bias_images", self.bias_images, allow_none=False)
        if self.cache_version is not None:      # before the calibration, not when writing
            from .cache import check_version
            try:
                check_version(self.cache_version)
            except CacheError as e:
                raise CalibrationArgumentError(str(e)) from None
        if self.target is not None:
            get_target(self.target)


@dataclass(frozen=True)
class BudgetOptions:
    """What :func:`calibration.quantize_to_budget` adds to :class:`QuantizeOptions`.

    max_drop: the points the file may lose on the validation split, held at ``confidence``
    (a one-sided upper bound). metric: ``"top1"`` (images FP32 gets right and INT8 wrong;
    needs labels) or ``"agreement"`` (images whose top-1 changed). method: the calibration
    method of the files tried, or ``"auto"``: the one whose fully INT8 file loses least on
    the split (this, not ``QuantizeOptions.method``, is the budget's method). max_excluded:
    fail rather than keep more layers in float (None: no limit). search: ``"linear"`` or
    ``"bisect"`` (:func:`calibration.greedy_exclusion`).
    """

    max_drop: float = 0.1
    metric: str = "top1"
    method: str = "percentile"
    max_excluded: Optional[int] = None
    search: str = "bisect"
    confidence: float = CONFIDENCE

    @classmethod
    def split(cls, budget: Optional["BudgetOptions"] = None,
              options: Optional[QuantizeOptions] = None, **changes):
        """``(BudgetOptions, QuantizeOptions)`` from both and keyword ``changes``: a name of
        this class goes to the budget (``method`` included), any other to the quantize
        options; an unknown name is an InputError listing both."""
        if budget is not None and not isinstance(budget, cls):
            raise CalibrationArgumentError(f"budget must be a calibration.BudgetOptions, got "
                                           f"{type(budget).__name__}")
        unknown_options(changes, QuantizeOptions, cls)
        mine = {k: changes.pop(k) for k in _names(cls) if k in changes}
        base = {f.name: getattr(budget, f.name) if budget else f.default for f in fields(cls)}
        base.update(mine)
        return cls(**base), QuantizeOptions.of(options, **changes)
