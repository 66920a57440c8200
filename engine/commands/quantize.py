"""``inception-engine quantize``: FP32 ONNX + calibration images -> symmetric INT8 Q/DQ ONNX."""
from __future__ import annotations

import json

from calibration.methods import METHODS

from . import add_command, non_negative_int, percentile, positive_int


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
    p.add_argument("--method", default="entropy",
                   choices=METHODS,
                   help="activation range method (default: entropy, TensorRT's "
                        "EntropyCalibration2)")
    p.add_argument("--percentile", type=percentile, default=99.99,
                   help="percentile of |x| in (0, 100] for --method percentile (default 99.99)")
    p.add_argument("--calib", metavar="DIR|FILE",
                   help="calibration images: a folder of images, or an .npy/.npz array "
                        "(float NCHW input, or uint8 images preprocessed per the model config)")
    p.add_argument("--num", type=positive_int, default=None, metavar="N",
                   help="use the first N calibration images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="calibration images per inference (default 32)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="NAME",
                   help="layers kept in float: ONNX node names (/conv2d_1a/conv/Conv) or "
                        "module paths (conv2d_1a, repeat.0.branch1)")
    p.add_argument("--auto-exclude", type=non_negative_int, default=0, metavar="K",
                   help="also keep the K layers with the largest output error when quantized "
                        "alone in float (sensitivity analysis on --sensitivity-images images)")
    p.add_argument("--sensitivity-images", type=positive_int, default=64, metavar="N")
    p.add_argument("--quantize-gemm", action="store_true",
                   help="quantize the classifier too (default: float; < 0.1%% of the MACs)")
    p.add_argument("--unsigned-relu", action="store_true",
                   help="uint8 with zero point 0 on non-negative tensors (ReLU outputs and their "
                        "concats/pools): fastest on OpenVINO, which then keeps every concat in "
                        "int8; TensorRT takes int8 Q/DQ only, so not for TensorRT")
    p.add_argument("--cache", metavar="FILE",
                   help="also write the scales as a TensorRT calibration cache")
    p.add_argument("--cache-version", default=None,
                   help="TensorRT version in the cache header (default 8601, i.e. 8.6.1)")
    p.add_argument("--from-cache", metavar="FILE",
                   help="take the activation scales from a TensorRT/ModelOpt calibration cache "
                        "instead of calibrating")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)


def run(args):
    import calibration
    from ..errors import InputError
    if args.calib is None and args.from_cache is None:
        raise InputError("give calibration images with --calib DIR|FILE.npz, or scales with "
                         "--from-cache FILE")
    res = calibration.quantize(
        args.input, args.output, data=args.calib, method=args.method, exclude=args.exclude,
        percentile=args.percentile, num_images=args.num, batch_size=args.batch_size,
        scales=args.from_cache, auto_exclude=args.auto_exclude,
        sensitivity_images=args.sensitivity_images, quantize_gemm=args.quantize_gemm,
        unsigned_relu=args.unsigned_relu,
        cache=args.cache, cache_version=args.cache_version, threads=args.threads,
        progress=not args.json)
    summary = {
        "output": str(res.path), "method": res.method,
        "num_images": res.statistics.num_images if res.statistics else 0,
        "quantized_layers": len(res.plan.layers), "qdq_tensors": len(res.plan.tensors),
        "excluded": res.plan.excluded, "auto_excluded": res.auto_excluded,
        "calibration_s": round(res.calibration_seconds, 2), "total_s": round(res.seconds, 2),
        "cache": str(res.cache) if res.cache else None}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    src = f"{summary['num_images']} images" if res.statistics else f"scales from {args.from_cache}"
    print(f"wrote {res.path}: INT8 Q/DQ, method {res.method}"
          + (f" ({args.percentile})" if res.method == "percentile" else "")
          + f", {src}, {summary['quantized_layers']} layers quantized, "
            f"{summary['qdq_tensors']} activation Q/DQ pairs, {summary['calibration_s']} s")
    if res.plan.excluded:
        print(f"kept in float: {len(res.plan.excluded)} nodes")
    if res.sensitivity:
        print("auto-excluded (relative output error, top-1 agreement when quantized alone):")
        for r in res.sensitivity[: len(res.auto_excluded)]:
            print(f"  {r.module or r.node:40s} {r.error:.3e}  {r.agreement:5.1f}%")
    if res.cache:
        print(f"calibration cache: {res.cache}")
    return 0
