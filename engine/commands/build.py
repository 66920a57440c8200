"""``inception-engine build``: ONNX (FP32 or Q/DQ INT8) -> TensorRT plan + sidecar."""
from __future__ import annotations

import argparse

from ..backends import BACKENDS
from ..backends.tensorrt import meta
from . import add_command, in_range, non_negative_int, positive_int


def byte_size(text: str) -> int:
    """Bytes from ``512`` (MiB, as trtexec reads it), ``512M``, ``2G``, ``64K``, ``4096B``
    (units are powers of 1024; a trailing ``iB`` or ``B`` after K/M/G is accepted)."""
    t = text.strip().upper()
    for tail in ("IB", "B"):
        if len(t) > len(tail) + 1 and t.endswith(tail) and t[-len(tail) - 1] in "KMG":
            t = t[:-len(tail)]
    unit = t[-1:] if t[-1:] in meta.WORKSPACE_UNITS else meta.WORKSPACE_DEFAULT_UNIT
    number = t[:-1] if t[-1:] in meta.WORKSPACE_UNITS else t
    try:
        value = float(number) * meta.WORKSPACE_UNITS[unit]
    except ValueError:
        value = -1.0
    if not value >= 1 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give a positive number of "
                                         "MiB (e.g. 2048), or a number with a unit B, K, M or G "
                                         "(e.g. 2G)")
    return int(value)


def precision_constraint(text: str) -> str:
    if text not in meta.PRECISION_CONSTRAINTS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of "
                                         f"{', '.join(meta.PRECISION_CONSTRAINTS)}")
    return text


def layer_precisions(text: str) -> dict:
    from ..errors import InputError
    try:
        return meta.parse_layer_precisions(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub):
    p = add_command(sub, "build", "inception-engine build irv2.onnx --out irv2.plan --precision "
                    "fp16 --max-batch 32", help="build a TensorRT plan from an ONNX file (needs "
                    "TensorRT and an NVIDIA GPU)")
    p.add_argument("onnx", help="FP32 export, or a Q/DQ file from `inception-engine quantize`")
    p.add_argument("-o", "--out", help="plan path (default: ONNX path with .plan); the sidecar "
                                       "PLAN.json is written beside it")
    p.add_argument("--precision", choices=BACKENDS["tensorrt"].precisions,
                   help="default: the file's own (int8 for a Q/DQ file, else fp32); fp16 "
                        "converts the graph to FP16; int8 needs Q/DQ nodes")
    p.add_argument("--min-batch", type=positive_int, default=1)
    p.add_argument("--opt-batch", type=positive_int, default=8)
    p.add_argument("--max-batch", type=positive_int, default=32)
    p.add_argument("--workspace", type=byte_size,
                   help="builder workspace limit: a number is MiB (as in trtexec), or give a "
                        "unit, e.g. 2G or 512M")
    p.add_argument("--timing-cache", metavar="FILE",
                   help="timing cache file, read if present and updated")
    low, high = meta.OPTIMIZATION_LEVELS
    p.add_argument("--builder-optimization-level", type=in_range(low, high, int, low_open=False),
                   metavar="N", help=f"{low} (fastest build) .. {high} (longest tactic search); "
                                     "default TensorRT's (3)")
    p.add_argument("--hardware-compatible", action="store_true",
                   help="run on every GPU from Ampere on (slower kernels)")
    p.add_argument("--layer-info", metavar="FILE",
                   help="write the built engine's layer information (IEngineInspector JSON, "
                        "like trtexec --exportLayerInfo)")
    p.add_argument("--precision-constraints", type=precision_constraint,
                   metavar="{obey,prefer}",
                   help="TensorRT 10 only: make --layer-precisions binding (obey) or a "
                        "preference (prefer)")
    p.add_argument("--layer-precisions", type=layer_precisions, metavar="SPEC",
                   help="per-layer precisions for mixed precision, LAYER:PRECISION,... with * "
                        "for the rest, e.g. '/classif/Gemm:fp32,*:fp16' (needs "
                        "--precision-constraints)")
    p.add_argument("--fp16-io", action="store_true",
                   help="with --precision fp16: float16 input/output instead of float32")
    p.add_argument("--device", type=non_negative_int, default=0, help="CUDA device index")
    p.add_argument("--verbose", action="store_true", help="show TensorRT's log")
    p.set_defaults(func=run)


def run(args):
    import json
    from ..backends.tensorrt import build
    from ..backends.tensorrt.meta import read_sidecar
    plan = build(args.onnx, args.out, precision=args.precision, min_batch=args.min_batch,
                 opt_batch=args.opt_batch, max_batch=args.max_batch, workspace=args.workspace,
                 timing_cache=args.timing_cache, hardware_compatible=args.hardware_compatible,
                 keep_io_fp32=not args.fp16_io, device=args.device, verbose=args.verbose,
                 builder_optimization_level=args.builder_optimization_level,
                 layer_info=args.layer_info, precision_constraints=args.precision_constraints,
                 layer_precisions=args.layer_precisions)
    side = read_sidecar(plan, required=True)
    print(f"wrote {plan} ({side['plan']['bytes'] / 1e6:.1f} MB, {side['precision']}, TensorRT "
          f"{side['tensorrt']['version']}, {side['gpu']['name']} "
          f"sm_{side['gpu']['compute_capability'].replace('.', '')})")
    print(f"sidecar {plan}.json: " + json.dumps(side["build_options"], sort_keys=True))
    if args.layer_info:
        print(f"layer information {args.layer_info}")
    return 0
