"""``inception-engine export``: a registered variant to one FP32 ONNX file (dynamic batch)."""
from __future__ import annotations

import json
import logging

from . import add_command, at_least, in_range, non_negative_int

log = logging.getLogger(__name__)


def register(sub):
    p = add_command(sub, "export", "inception-engine export --model inception_resnet_v2 "
                    "--weights w.pth --out irv2.onnx", help="export a model variant to ONNX "
                    "(FP32, dynamic batch)")
    p.add_argument("--model", required=True, help="registered variant (see `inception-engine models`)")
    p.add_argument("--weights", help="'timm', 'bundled' or a checkpoint path; default: random "
                                     "init with --seed (say so where it matters)")
    p.add_argument("--allow-non-finite-weights", action="store_true",
                   help="load a checkpoint holding NaN/Inf (refused by default)")
    p.add_argument("--width", type=in_range(0, 4), default=1.0,
                   help="channel multiplier in (0, 4] (default 1.0)")
    p.add_argument("--num-classes", type=non_negative_int,
                   help="override the classifier size (0 removes it)")
    p.add_argument("--out", help="output file (default: MODEL.onnx)")
    p.add_argument("--opset", type=at_least(17), default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch axis (default: dynamic, one file serves any batch)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="torch seed for random init (no --weights); verify uses the same")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=run)


def run(args):
    from pathlib import Path
    from ..export import export_onnx
    from ..onnxmeta import read_metadata
    from ..fileio import sha256_file
    from ..models.registry import create_model
    model = create_model(args.model, weights=args.weights, width=args.width,
                         num_classes=args.num_classes, seed=args.seed,
                         allow_non_finite=args.allow_non_finite_weights)
    out = Path(args.out or f"{args.model}.onnx")
    export_onnx(model, out, opset=args.opset, dynamic_batch=not args.static_batch)
    meta = read_metadata(out)
    summary = {"path": str(out), "bytes": out.stat().st_size, "sha256": sha256_file(out),
               "model": model.config.name, "width": model.config.width,
               "input_size": list(model.config.input_size), "opset": args.opset,
               "dynamic_batch": not args.static_batch, "weights": args.weights or "random",
               "weights_sha256": meta["weights_sha256"]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if args.weights is None:
        log.warning("random weights (seed %d); pass --weights for a real model", args.seed)
    c, h, w = model.config.input_size
    print(f"wrote {out} ({summary['bytes'] / 1e6:.1f} MB): {model.config.name} width "
          f"{model.config.width:g}, input {'N' if not args.static_batch else 2}x{c}x{h}x{w}, "
          f"opset {args.opset}")
    return 0
