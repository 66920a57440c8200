"""INT8 Q/DQ speed on OpenVINO: our per-target files vs NNCF vs PyTorch eager FP32 vs ORT.

Inception-ResNet-v2 at 299x299 (random weights: speed does not depend on them), batch 1,
``--threads`` CPU threads (default 2), OpenVINO CPU with one stream and the latency hint.
Every engine is timed (``engine.timing.time_calls``) in this one process, interleaved round by
round, so a busy shared machine slows them alike; the median over rounds is reported.

Rows:
- ``torch eager fp32``: the PyTorch reference (``engine.create_model``), ``torch.inference_mode``;
- ``openvino fp32``: the FP32 export with the f32 precision hint (OpenVINO's CPU default is bf16);
- ``openvino int8 (ours, <method>, target tensorrt|openvino)``: ``calibration.quantize_targets``
  output from one calibration: the signed file (TensorRT's layout) and OpenVINO's (uint8,
  zero point 0 on non-negative tensors, which lets OpenVINO keep every concat in int8);
- ``openvino int8 (nncf)``: NNCF's ``nncf.quantize`` (its default preset: the ``nncf``
  anchor of ``engine.anchors``) on the same FP32 export and the same calibration images, when
  nncf is installed (``--skip-nncf`` to leave it out);
- ``openvino int8 (ort quantize_static)``: ONNX Runtime's symmetric QDQ (the
  ``ort-qdq-symmetric`` anchor of ``engine.anchors``) of the same FP32 export;
- ``onnxruntime int8 (ours)``: our file on ONNX Runtime's CPU provider, for the record.

Each row also has the batch-8 throughput (img/s, median call), timed in the same rounds.

    python benchmarks/int8_speed.py --out benchmarks/int8_speed.json [--rounds 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_images(n, size, seed=0):
    """Smooth random images in [-1, 1] (low-frequency noise, upsampled), float32 NCHW."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 16, size // 16, generator=g) * 2 - 1
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x + 0.1 * (torch.rand(n, 3, size, size, generator=g) * 2 - 1)).clamp(-1, 1).numpy()


def runtime_precisions(compiled) -> dict:
    """How OpenVINO runs the convolutions and concats: ``{"Convolution u8": 244, ...}``."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if kind in ("Convolution", "Concatenation"):
            key = f"{kind} {rt['runtimePrecision'].astype(str)}"
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def interleaved(runners, rounds, warmup):
    """``{name: percentiles}`` of one timed call per runner per round, rounds interleaved so a
    busy machine slows every runner alike."""
    import torch
    from engine.timing import percentiles, time_calls
    times = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for f in runners.values():
                f()
        for _ in range(rounds):
            for k, f in runners.items():
                times[k] += time_calls(f, iters=1, warmup=0, cuda=False)
    return {k: percentiles(ts) for k, ts in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="inception_resnet_v2")
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--calib", type=int, default=8, help="synthetic calibration images")
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--workdir", default=None, help="keep the ONNX files here")
    ap.add_argument("--skip-ort-baseline", action="store_true")
    ap.add_argument("--skip-nncf", action="store_true")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    import openvino as ov
    import onnxruntime as ort
    import torch
    import engine
    import calibration
    from engine.anchors import ANCHORS

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="int8_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    model = engine.create_model(args.model).eval()
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        engine.export_onnx(model, fp32, input_size=(3, args.size, args.size))
    calib = synthetic_images(args.calib, args.size)
    t0 = time.perf_counter()
    stats = calibration.collect_statistics(fp32, calib, batch_size=2, threads=args.threads)
    targets = calibration.quantize_targets(
        fp32, {t: work / f"int8.{args.method}.{t}.onnx" for t in ("tensorrt", "openvino")},
        statistics=stats, method=args.method)
    calib_s = time.perf_counter() - t0
    res, ours = targets["tensorrt"], targets["tensorrt"].path
    files = {"openvino fp32": fp32}
    files.update({f"openvino int8 (ours, {args.method}, target {t})": r.path
                  for t, r in targets.items()})
    # the anchors: the same FP32 export and calibration images (engine.anchors)
    if not args.skip_ort_baseline:
        files["openvino int8 (ort quantize_static)"] = ANCHORS["ort-qdq-symmetric"].quantize(
            fp32, calib, work, args.threads)[0]
    if not args.skip_nncf:
        files["openvino int8 (nncf)"] = ANCHORS["nncf"].quantize(fp32, calib, work,
                                                                  args.threads)[0]
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1,
           "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    x = calib[:1].copy()
    x8 = np.ascontiguousarray(np.repeat(calib, -(-8 // len(calib)), 0)[:8])
    runners, errors, precisions, runners8 = {}, {}, {}, {}
    xt, xt8 = torch.from_numpy(x), torch.from_numpy(x8)
    runners["torch eager fp32"] = lambda: model(xt)
    runners8["torch eager fp32"] = lambda: model(xt8)
    for name, path in files.items():
        try:
            compiled = core.compile_model(str(path), "CPU", cfg)
            precisions[name] = runtime_precisions(compiled)
            req = compiled.create_infer_request()
            runners[name] = (lambda r: (lambda: r.infer({0: x})))(req)
            req8 = compiled.create_infer_request()
            runners8[name] = (lambda r: (lambda: r.infer({0: x8})))(req8)
        except Exception as e:        # report a file OpenVINO cannot compile, keep going
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    sess = ort.InferenceSession(str(ours), so, providers=["CPUExecutionProvider"])
    runners["onnxruntime int8 (ours)"] = lambda: sess.run(None, {"input": x})
    runners8["onnxruntime int8 (ours)"] = lambda: sess.run(None, {"input": x8})

    summary = interleaved(runners, args.rounds, args.warmup)
    summary8 = interleaved(runners8, max(3, args.rounds // 2), 1)
    eager = summary["torch eager fp32"]["p50_ms"]
    rows = []
    for k, stat in summary.items():
        rows.append({"engine": k, "median_ms": round(stat["p50_ms"], 2),
                     "min_ms": round(stat["min_ms"], 2),
                     "vs_eager": round(stat["p50_ms"] / eager, 3),
                     "batch8_img_s": round(8000.0 / summary8[k]["p50_ms"], 2),
                     "runs_as": precisions.get(k)})
    for k, e in errors.items():
        rows.append({"engine": k, "error": e})
    info = {"model": args.model, "size": args.size, "batch": 1, "threads": args.threads,
            "rounds": args.rounds, "method": args.method, "calib_images": args.calib,
            "calibration_s": round(calib_s, 1), "qdq_tensors": len(res.plan.tensors),
            "cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
            "openvino_cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "openvino_caps": core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
            "loadavg_start": os.getloadavg(), "openvino": ov.__version__,
            "onnxruntime": ort.__version__, "torch": torch.__version__}
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(info))
    if args.out:
        from engine.fileio import atomic_write_text
        atomic_write_text(args.out, json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
