"""``inception-engine run``: classify images with the reference model or an exported engine."""
from __future__ import annotations

import contextlib
import json
import logging

from ..errors import InputError
from . import add_command, positive_int

log = logging.getLogger(__name__)


def register(sub):
    p = add_command(sub, "run", "inception-engine run --engine irv2.onnx --backend openvino "
                    "--topk 3 cat.jpg dog.jpg", help="classify images: top-k labels and "
                    "probabilities")
    p.add_argument("images", nargs="+", help="image files (JPEG/PNG/...)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registered variant (PyTorch reference unless --backend)")
    src.add_argument("--engine", metavar="FILE", help="an exported .onnx or built .plan to run")
    p.add_argument("--weights", help="'timm', 'bundled' or a checkpoint path (with --model)")
    p.add_argument("--allow-non-finite-weights", action="store_true",
                   help="load a checkpoint holding NaN/Inf (refused by default)")
    p.add_argument("--backend", help="openvino | onnxruntime | torch | tensorrt | triton")
    p.add_argument("--precision", help="fp32 | bf16 | fp16 | int8 (backend permitting)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for the engine")
    p.add_argument("--topk", type=positive_int, default=5,
                   help="how many classes to show per image (default 5)")
    p.add_argument("--explain", action="store_true",
                   help="print the engine's execution plan (triton backend)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _runner(args, stack: contextlib.ExitStack):
    """Return (callable, config, description, random_weights). The runtime, and the temporary
    ONNX file of a --model run on another engine, are closed and removed when ``stack`` exits."""
    from ..loader import load
    if args.engine:
        rt = stack.enter_context(load(args.engine, backend=args.backend,
                                      precision=args.precision, threads=args.threads))
        if rt.config is None:
            raise InputError(f"{args.engine} carries no model config (not exported by this tool); "
                             "cannot preprocess images for it: export it with `inception-engine "
                             "export`, or run the model with --model")
        return rt, rt.config, f"{rt.backend}/{rt.precision}", False
    from ..models.registry import create_model
    model = create_model(args.model, weights=args.weights,
                         allow_non_finite=args.allow_non_finite_weights)
    if args.backend in (None, "torch"):
        import torch

        def fwd(x):
            with torch.no_grad():
                return model(x)
        return fwd, model.config, "torch/fp32", args.weights is None
    # another engine on the fly: export to a temporary folder, removed when the run ends
    import tempfile
    from pathlib import Path
    from ..export import export_onnx
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inception-run-")))
    tmp = export_onnx(model, folder / f"{args.model}.onnx")
    rt = stack.enter_context(load(tmp, backend=args.backend, precision=args.precision,
                                  threads=args.threads))
    return rt, model.config, f"{rt.backend}/{rt.precision}", args.weights is None


def _classify(fn, cfg, images, k: int):
    """One result per image: its top-``k`` classes, or its embedding."""
    import numpy as np
    from ..preprocess import labels_for, preprocess, topk
    labels = labels_for(cfg)
    results = []
    for path in images:
        out = fn(preprocess(path, cfg))
        out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        if cfg.output == "embedding" and cfg.num_classes == 0:
            results.append({"image": str(path), "embedding": out[0].tolist()})
            continue
        top = topk(out, k, labels, cfg.label_offset)[0]
        results.append({"image": str(path), "top": [
            {"class": c, "label": l, "prob": p} for c, l, p in top]})
    return results


def _print_results(cfg, desc: str, random_weights: bool, results) -> None:
    print(f"model {cfg.name} on {desc}" + (" [RANDOM WEIGHTS]" if random_weights else ""))
    for r in results:
        print(f"\n{r['image']}")
        if "embedding" in r:
            print(f"  {len(r['embedding'])}-d embedding, first values "
                  + " ".join(f"{v:+.4f}" for v in r["embedding"][:6]))
            continue
        for t in r["top"]:
            print(f"  {t['prob'] * 100:6.2f}%  {t['class']:>4}  {t['label']}")


def run(args):
    if args.weights and args.engine:
        raise InputError("--weights applies to --model; an --engine file already holds its weights")
    with contextlib.ExitStack() as stack:
        fn, cfg, desc, random_weights = _runner(args, stack)
        if args.explain:
            explain = getattr(fn, "explain", None)
            if explain is None:
                raise InputError("--explain needs an engine with an execution plan "
                                 "(--backend triton)")
            print(explain())
        results = _classify(fn, cfg, args.images, args.topk)
    warning = ("weights are random (no --weights given; pretrained weights are not reachable "
               "offline): the predictions below are meaningless") if random_weights else None
    if args.json:
        print(json.dumps({"model": cfg.name, "engine": desc, "random_weights": random_weights,
                          "warning": warning, "results": results}, indent=2))
        return 0
    if warning:
        log.warning(warning)
    _print_results(cfg, desc, random_weights, results)
    return 0
