"""``inception-engine quantize``: FP32 ONNX + calibration images -> symmetric INT8 Q/DQ ONNX."""
from __future__ import annotations

import argparse
import json

from calibration.budget import AUTO, METRICS
from calibration.methods import METHODS
from calibration.options import BudgetOptions, QuantizeOptions as Defaults
from calibration.targets import TARGETS

from . import add_command, confidence, in_range, non_negative_int, percentile, positive_int

# --bias-correction -> calibration.quantize(bias_correction=...)
BIAS_CORRECTION = {"auto": None, "on": True, "off": False}
# the target of a file when neither --target nor --unsigned-relu names one: OpenVINO, the CPU
# default engine of `inception-engine run/bench` (the library's default is tensorrt)
CLI_TARGET = "openvino"


def _bias_correction_name(value) -> str:
    """The --bias-correction choice that stands for ``bias_correction=value``."""
    return next(name for name, v in BIAS_CORRECTION.items() if v is value)


def register(sub):
    p = add_command(
        sub, "quantize", "inception-engine quantize irv2.onnx irv2-int8.onnx --calib calib/ "
        "--method entropy --num 512 --batch-size 32",
        help="calibrate an FP32 ONNX export and write a symmetric INT8 Q/DQ ONNX",
        description="Calibrate IN.onnx (an FP32 export) on --calib images and write OUT.onnx "
                    "with symmetric Q/DQ nodes (zero points 0, per-channel weights) that "
                    "OpenVINO, ONNX Runtime and TensorRT run as INT8.")
    p.add_argument("input", metavar="IN.onnx", help="FP32 ONNX from `inception-engine export`")
    p.add_argument("output", metavar="OUT.onnx", help="where to write the Q/DQ ONNX")
    p.add_argument("--method", default=Defaults.method,
                   choices=(*METHODS, AUTO),
                   help="activation range method (default: %(default)s; entropy is TensorRT's "
                        "EntropyCalibration2); auto, with --max-drop: the method that loses "
                        "least on the validation split")
    p.add_argument("--percentile", type=percentile, default=Defaults.percentile,
                   help="percentile of |x| in (0, 100] for --method percentile "
                        "(default %(default)s)")
    p.add_argument("--calib", metavar="DIR|FILE",
                   help="calibration images: a folder of images, or an .npy/.npz array "
                        "(float NCHW input, or uint8 images preprocessed per the model config)")
    p.add_argument("--num", type=positive_int, default=Defaults.num_images, metavar="N",
                   help="use the first N calibration images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=Defaults.batch_size,
                   help="calibration images per inference (default %(default)s)")
    p.add_argument("--exclude", nargs="+", default=list(Defaults.exclude), metavar="NAME",
                   help="layers kept in float: ONNX node names (/conv2d_1a/conv/Conv) or "
                        "module paths (conv2d_1a, repeat.0.branch1)")
    p.add_argument("--auto-exclude", type=non_negative_int, default=Defaults.auto_exclude,
                   metavar="K",
                   help="also keep the K layers with the largest output error when quantized "
                        "alone in float (sensitivity analysis on --sensitivity-images images)")
    p.add_argument("--sensitivity-images", type=positive_int,
                   default=Defaults.sensitivity_images, metavar="N")
    p.add_argument("--quantize-gemm", action=argparse.BooleanOptionalAction,
                   default=Defaults.quantize_gemm,
                   help="the head (global pool and classifier, < 0.1%% of the MACs) in int8 "
                        "(default: the target's choice: float on every target; on OpenVINO "
                        "the float head was measured faster end to end)")
    p.add_argument("--target", choices=list(TARGETS), default=None,
                   help="the engine that will run OUT.onnx; each gets its fastest Q/DQ layout "
                        "(openvino: uint8 after ReLU; onnxruntime, tensorrt, triton: signed "
                        f"int8). Default: {CLI_TARGET}, the CPU default engine of "
                        "`inception-engine run/bench`")
    p.add_argument("--bias-correction", choices=tuple(BIAS_CORRECTION),
                   default=_bias_correction_name(Defaults.bias_correction),
                   help="shift each conv's bias by the mean error quantization adds to its "
                        "output (measured on the --calib images); auto: where it "
                        "was measured to help this --target and --method (default "
                        "%(default)s)")
    p.add_argument("--unsigned-relu", action="store_true",
                   help="deprecated: the same as --target openvino")
    p.add_argument("--max-drop", type=in_range(0, 100), default=None, metavar="PT",
                   help="accuracy budget: keep the most sensitive layers in float, in "
                        "sensitivity order, until the images lost against FP32 on the "
                        "validation split (FP32 right, INT8 wrong; gains are not netted) are "
                        "at most PT points with --confidence (a one-sided Clopper-Pearson "
                        "upper bound), e.g. 0.1; measured on the --target engine when it is "
                        "usable here, else ONNX Runtime. A split too small for PT at that "
                        "confidence is refused, with the size it needs")
    p.add_argument("--confidence", type=confidence, default=BudgetOptions.confidence,
                   help="confidence of the --max-drop bound, in [0.5, 1) (default %(default)s)")
    p.add_argument("--budget-metric", choices=METRICS, default=BudgetOptions.metric,
                   help="top1: images FP32 gets right and INT8 wrong, on the labelled split; "
                        "agreement: images whose top-1 differs from FP32's (no labels needed) "
                        "(default %(default)s)")
    p.add_argument("--val", metavar="FILE.npz|DIR",
                   help="validation split for --max-drop: .npz (images, labels) or class "
                        "folders. It must hold no test image and no image the model was "
                        "trained on, or the bound is optimistic (default for the Fashion-MNIST "
                        "subjects: the shipped 5,000 held-out train images)")
    p.add_argument("--max-excluded", type=non_negative_int, default=BudgetOptions.max_excluded,
                   metavar="K",
                   help="with --max-drop: fail rather than keep more than K layers in float")
    p.add_argument("--cache", metavar="FILE",
                   help="also write the scales as a TensorRT calibration cache")
    p.add_argument("--cache-version", default=Defaults.cache_version,
                   help="TensorRT version in the cache header (default 8601, i.e. 8.6.1)")
    p.add_argument("--from-cache", metavar="FILE",
                   help="take the activation scales from a TensorRT/ModelOpt calibration cache "
                        "instead of calibrating")
    p.add_argument("--threads", type=positive_int, default=Defaults.threads,
                   help="ONNX Runtime threads")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)


def _options(args, progress: bool) -> Defaults:
    """The calibration options the command line gives (``calibration.QuantizeOptions``); the
    deprecated --unsigned-relu goes to the library's one mapping of ``unsigned_relu``."""
    unsigned_relu = True if args.unsigned_relu else None
    target = args.target if args.target or unsigned_relu else CLI_TARGET
    return Defaults.of(method=args.method if args.method != AUTO else Defaults.method,
                       exclude=args.exclude, percentile=args.percentile,
                       num_images=args.num, batch_size=args.batch_size,
                       auto_exclude=args.auto_exclude,
                       sensitivity_images=args.sensitivity_images,
                       quantize_gemm=args.quantize_gemm, target=target,
                       unsigned_relu=unsigned_relu, cache_version=args.cache_version,
                       threads=args.threads,
                       bias_correction=BIAS_CORRECTION[args.bias_correction],
                       progress=progress)


def _quantize_to_budget(args, options: Defaults):
    """--max-drop: the greedy search, measured on the target's engine when usable here."""
    import calibration
    from ..errors import InputError
    from ..onnxmeta import read_metadata
    from ..evaldata import validation_data
    from ..evaluation import engine_evaluator
    if args.from_cache or args.auto_exclude:
        raise InputError("--max-drop chooses the layers kept in float itself, from --calib "
                         "images: drop --from-cache and --auto-exclude")
    if args.cache is not None:
        raise InputError("--max-drop writes no TensorRT cache; drop --cache")
    x, labels = validation_data(args.val, read_metadata(args.input)["config"])
    evaluate = engine_evaluator(options.target, x, args.threads,
                                log=lambda m: None if args.json else print(m))
    budget = BudgetOptions(max_drop=args.max_drop, metric=args.budget_metric,
                           method=args.method, max_excluded=args.max_excluded,
                           confidence=args.confidence)
    return calibration.quantize_to_budget(args.input, args.output, x, labels, data=args.calib,
                                          evaluate=evaluate, budget=budget, options=options)


def run(args):
    import calibration
    from ..errors import InputError
    if args.method == AUTO and args.max_drop is None:
        raise InputError("--method auto chooses the method on the validation split of "
                         "--max-drop; add --max-drop PT, or name a method")
    if args.calib is None and args.from_cache is None:
        raise InputError("give calibration images with --calib DIR|FILE.npz, or scales with "
                         "--from-cache FILE")
    if args.max_drop is not None:
        # the search writes many trial files: no progress lines for each
        res = _quantize_to_budget(args, _options(args, progress=False))
    else:
        res = calibration.quantize(args.input, args.output, data=args.calib,
                                   options=_options(args, progress=not args.json),
                                   scales=args.from_cache, cache=args.cache)
    summary = {
        "output": str(res.path), "method": res.method, "target": res.target,
        "num_images": res.statistics.num_images if res.statistics else 0,
        "quantized_layers": len(res.plan.layers), "qdq_tensors": len(res.plan.tensors),
        "excluded": res.plan.excluded, "auto_excluded": res.auto_excluded,
        "calibration_s": round(res.calibration_seconds, 2), "total_s": round(res.seconds, 2),
        "cache": str(res.cache) if res.cache else None,
        "budget": res.budget.record() if res.budget else None,
        "bias_correction": res.bias_correction}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    src = f"{summary['num_images']} images" if res.statistics else f"scales from {args.from_cache}"
    print(f"wrote {res.path}: INT8 Q/DQ for {res.target}, method {res.method}"
          + (f" ({args.percentile})" if res.method == "percentile" else "")
          + f", {src}, {summary['quantized_layers']} layers quantized, "
            f"{summary['qdq_tensors']} activation Q/DQ pairs, {summary['calibration_s']} s")
    if res.plan.excluded:
        print(f"kept in float: {len(res.plan.excluded)} nodes")
    if res.sensitivity:
        print("auto-excluded (relative output error, top-1 agreement when quantized alone):")
        for r in res.sensitivity[: len(res.auto_excluded)]:
            print(f"  {r.module or r.node:40s} {r.error:.3e}  {r.agreement:5.1f}%")
    if res.budget:
        b = res.budget
        print(f"budget on the validation split: {b.summary()} "
              f"({calibration.TARGETS[res.target].fallback} on {res.target})"
              + "".join(f"\n  {n}" for n in b.excluded))
    if res.bias_correction:
        bc = res.bias_correction
        print(f"bias correction ({bc['chosen']}): {bc['convs']} convs, {bc['images']} images, "
              f"largest shift {bc['largest_shift']:.3g}")
    if res.cache:
        print(f"calibration cache: {res.cache}")
    return 0
