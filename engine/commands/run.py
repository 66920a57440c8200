"""``inception-engine run``: classify images with the reference model or an exported engine."""
from __future__ import annotations

import json
import sys

from ..errors import InputError
from . import at_least


def register(sub):
    p = sub.add_parser("run", help="classify images: top-k labels and probabilities")
    p.add_argument("images", nargs="+", help="image files (JPEG/PNG/...)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registered variant (PyTorch reference unless --backend)")
    src.add_argument("--engine", metavar="FILE", help="an exported .onnx or built .plan to run")
    p.add_argument("--weights", help="'timm', 'bundled' or a checkpoint path (with --model)")
    p.add_argument("--backend", help="openvino | onnxruntime | torch | tensorrt | triton")
    p.add_argument("--precision", help="fp32 | bf16 | fp16 | int8 (backend permitting)")
    p.add_argument("--threads", type=at_least(1), help="CPU threads for the engine")
    p.add_argument("--topk", type=at_least(1), default=5)
    p.add_argument("--explain", action="store_true",
                   help="print the engine's execution plan (triton backend)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _runner(args):
    """Return (callable, config, description, random_weights)."""
    if args.engine:
        from ..loader import load
        rt = load(args.engine, backend=args.backend, precision=args.precision, threads=args.threads)
        if rt.config is None:
            raise InputError(f"{args.engine} carries no model config (not exported by this tool); "
                             "cannot preprocess images for it")
        return rt, rt.config, f"{rt.backend}/{rt.precision}", False
    from ..models.registry import create_model
    model = create_model(args.model, weights=args.weights)
    if args.backend in (None, "torch"):
        import torch

        def fwd(x):
            with torch.no_grad():
                return model(x)
        return fwd, model.config, "torch/fp32", args.weights is None
    # another engine on the fly: export to a temporary ONNX file and load it
    import tempfile
    from pathlib import Path
    from ..export import export_onnx
    from ..loader import load
    tmp = Path(tempfile.mkdtemp(prefix="inception-run-")) / f"{args.model}.onnx"
    export_onnx(model, tmp)
    rt = load(tmp, backend=args.backend, precision=args.precision, threads=args.threads)
    return rt, model.config, f"{rt.backend}/{rt.precision}", args.weights is None


def run(args):
    import numpy as np
    from ..preprocess import labels_for, preprocess, topk
    if args.weights and args.engine:
        raise InputError("--weights applies to --model; an --engine file already holds its weights")
    fn, cfg, desc, random_weights = _runner(args)
    if args.explain:
        explain = getattr(fn, "explain", None)
        if explain is None:
            raise InputError("--explain needs an engine with an execution plan (--backend triton)")
        print(explain())
    labels = labels_for(cfg)
    results = []
    for path in args.images:
        x = preprocess(path, cfg)
        out = fn(x)
        out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        if cfg.output == "embedding" and cfg.num_classes == 0:
            results.append({"image": str(path), "embedding": out[0].tolist()})
            continue
        top = topk(out, args.topk, labels, cfg.label_offset)[0]
        results.append({"image": str(path), "top": [
            {"class": c, "label": l, "prob": p} for c, l, p in top]})
    warning = ("weights are random (no --weights given; pretrained weights are not reachable "
               "offline): the predictions below are meaningless") if random_weights else None
    if args.json:
        print(json.dumps({"model": cfg.name, "engine": desc, "random_weights": random_weights,
                          "warning": warning, "results": results}, indent=2))
        return 0
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"model {cfg.name} on {desc}" + (" [RANDOM WEIGHTS]" if random_weights else ""))
    for r in results:
        print(f"\n{r['image']}")
        if "embedding" in r:
            print(f"  {len(r['embedding'])}-d embedding, first values "
                  + " ".join(f"{v:+.4f}" for v in r["embedding"][:6]))
            continue
        for t in r["top"]:
            print(f"  {t['prob'] * 100:6.2f}%  {t['class']:>4}  {t['label']}")
    return 0
