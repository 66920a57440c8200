"""``inception-engine build``: ONNX (FP32 or Q/DQ INT8) -> TensorRT plan + sidecar."""
from __future__ import annotations

import argparse

from ..backends import BACKENDS
from . import add_command, non_negative_int, positive_int

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def byte_size(text: str) -> int:
    """Bytes from ``4096``, ``512M``, ``2G`` (``K``/``M``/``G`` are powers of 1024)."""
    t = text.strip().upper().rstrip("B")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give a positive number of "
                                         "bytes, optionally with K, M or G (e.g. 2G)")
    return int(value * _UNITS.get(unit, 1))


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
    p.add_argument("--workspace", type=byte_size, help="builder workspace limit, e.g. 2G")
    p.add_argument("--timing-cache", help="timing cache file, read if present and updated")
    p.add_argument("--hardware-compatible", action="store_true",
                   help="run on every GPU from Ampere on (slower kernels)")
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
                 keep_io_fp32=not args.fp16_io, device=args.device, verbose=args.verbose)
    side = read_sidecar(plan, required=True)
    print(f"wrote {plan} ({side['plan']['bytes'] / 1e6:.1f} MB, {side['precision']}, TensorRT "
          f"{side['tensorrt']['version']}, {side['gpu']['name']} "
          f"sm_{side['gpu']['compute_capability'].replace('.', '')})")
    print(f"sidecar {plan}.json: " + json.dumps(side["build_options"], sort_keys=True))
    return 0
