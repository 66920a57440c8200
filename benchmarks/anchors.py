"""INT8 accuracy of our per-target files beside NNCF, and ``--max-drop`` on every target.

On the shipped IR-v2 subject (or ``--model``), with the same calibration images for every
quantizer (the first ``--calib`` of the shipped split) and the whole shipped test set:

- FP32 on OpenVINO and ONNX Runtime (the reference each INT8 row is compared with);
- ours, target openvino, each ``--methods`` on OpenVINO;
- NNCF's ``nncf.quantize`` (default preset) on OpenVINO, when nncf is installed;
- ``calibration.quantize_to_budget(max_drop=--max-drop)`` per target: the layers kept in
  float are chosen on the shipped validation split (measured on the target's own engine when
  it is usable here; the signed tensorrt-target file on every CPU engine too, the worst drop
  counting); the test set only reports the result, on OpenVINO
  and ONNX Runtime.

    python benchmarks/anchors.py --out benchmarks/results/anchors.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def top1_on(backend, path, x, y, threads):
    """(top-1 %, predictions) of a model file on an engine over the whole set."""
    import engine
    from engine.study import predict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with engine.load(path, backend=backend, threads=threads) as rt:
            pred = predict(rt, x, 100).argmax(1)
    return 100.0 * float((pred == y).mean()), pred


def nncf_file(fp32, calib, out):
    """NNCF's default post-training INT8 of the FP32 export, saved as OpenVINO IR."""
    import nncf
    import openvino as ov
    t0 = time.perf_counter()
    model = nncf.quantize(ov.Core().read_model(str(fp32)),
                          nncf.Dataset([calib[i:i + 32] for i in range(0, len(calib), 32)]),
                          subset_size=len(calib))
    ov.save_model(model, str(out))
    return out, time.perf_counter() - t0


def budget_evaluators(target, x, threads):
    """Where the budget must hold: the target's engine; for the signed layout, which every
    engine runs, each CPU engine here as well."""
    from engine.study import engine_evaluator
    names = [target] if target == "openvino" else [target, "onnxruntime", "openvino"]
    found = [engine_evaluator(n, x, threads) for n in dict.fromkeys(names)]
    return [e for e in found if e is not None] or None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="inception_resnet_v2_fmnist")
    ap.add_argument("--methods", default="minmax,percentile,mse")
    ap.add_argument("--calib", type=int, default=1000)
    ap.add_argument("--num-test", type=int, default=None)
    ap.add_argument("--max-drop", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import tempfile
    import torch
    import calibration
    import engine
    from engine.study import default_calib, load_eval_data, machine_info, validation_data
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="anchors_"))
    work.mkdir(parents=True, exist_ok=True)
    model = engine.create_model(args.model, weights="bundled")
    cfg = model.config
    fp32 = engine.export_onnx(model, work / "fp32.onnx")
    calib = default_calib(cfg, args.calib)
    x, y = load_eval_data(None, cfg, args.num_test)
    xv, yv = validation_data(None, cfg)
    rows = []

    def add(quantizer, backend, path, seconds=None, **extra):
        top1, _ = top1_on(backend, path, x, y, args.threads)
        base = next((r["top1"] for r in rows if r["quantizer"] == "fp32"
                     and r["engine"] == backend), top1)
        row = {"quantizer": quantizer, "engine": backend, "top1": round(top1, 2),
               "delta_pt": round(top1 - base, 2),
               "calib_s": None if seconds is None else round(seconds, 1), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for backend in ("openvino", "onnxruntime"):
        add("fp32", backend, fp32)
    t0 = time.perf_counter()
    stats = calibration.collect_statistics(fp32, calib, threads=args.threads)
    stats_s = time.perf_counter() - t0
    for method in args.methods.split(","):
        res = calibration.quantize(fp32, work / f"ov.{method}.onnx", statistics=stats,
                                   method=method, target="openvino")
        add(f"ours {method} @openvino", "openvino", res.path, stats_s + res.calibration_seconds)
    try:
        path, seconds = nncf_file(fp32, calib, work / "nncf.xml")
        add("nncf default", "openvino", path, seconds)
    except ImportError:
        print("nncf not installed: no NNCF row (pip install nncf)")
    for target in ("openvino", "tensorrt"):
        t0 = time.perf_counter()
        res = calibration.quantize_to_budget(
            fp32, work / f"budget.{target}.onnx", xv, yv, max_drop=args.max_drop, data=calib,
            statistics=stats, method="percentile", target=target, threads=args.threads,
            evaluate=budget_evaluators(target, xv, args.threads))
        seconds = stats_s + time.perf_counter() - t0
        for backend in ("openvino", "onnxruntime"):
            add(f"ours percentile @{target} --max-drop {args.max_drop}", backend, res.path,
                seconds, kept_float=res.budget.excluded, val_drop=res.budget.drop)
    info = {"model": args.model, "test_images": int(len(x)), "calib_images": args.calib,
            "val_images": int(len(xv)), "machine": machine_info()}
    print(json.dumps(info))
    if args.out:
        from engine.fileio import atomic_write_text
        atomic_write_text(args.out, json.dumps({"info": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
