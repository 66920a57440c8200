"""Does bias correction help? Each method and target layout, with and without it, per engine.

For each shipped subject (``--model``, default all three), one statistics pass over the first
``--calib`` images of the shipped calibration split, then for every method and target (the
signed file on ONNX Runtime and OpenVINO, OpenVINO's uint8 file on OpenVINO) two files: with
and without ``bias_correction``. Each is scored against the FP32 file on the same engine:

- on the shipped validation split (1,000 train images, disjoint from calibration): the split
  the default is chosen on (``calibration.targets``);
- on the whole shipped test set (10,000 images): the figure reported.

    python benchmarks/bias_correction.py --out benchmarks/results/bias_correction.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENGINES = {"tensorrt": ("onnxruntime", "openvino"), "openvino": ("openvino",)}


def predictions(path, backend, x, threads):
    import engine
    from engine.study import predict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with engine.load(path, backend=backend, threads=threads) as rt:
            return predict(rt, x, 100).argmax(1)


def study_subject(name, methods, num_calib, threads, work, log):
    """Rows of one subject: every method x target x engine x (with, without)."""
    import calibration
    import engine
    from engine.study import default_calib, load_eval_data, validation_data
    model = engine.create_model(name, weights="bundled")
    fp32 = engine.export_onnx(model, work / f"{name}.onnx")
    calib = default_calib(model.config, num_calib)
    sets = {"val": validation_data(None, model.config), "test": load_eval_data(None, model.config)}
    ref = {(b, s): predictions(fp32, b, x, threads)
           for b in ("openvino", "onnxruntime") for s, (x, _) in sets.items()}
    stats = calibration.collect_statistics(fp32, calib, threads=threads)
    rows = []
    for method in methods:
        for target, backends in ENGINES.items():
            for corrected in (False, True):
                t0 = time.perf_counter()
                res = calibration.quantize(
                    fp32, work / f"{name}.{target}.{method}.bc{int(corrected)}.onnx",
                    data=calib, statistics=stats, method=method, target=target,
                    bias_correction=corrected, threads=threads)
                seconds = time.perf_counter() - t0
                for backend in backends:
                    row = {"model": name, "method": method, "target": target,
                           "engine": backend, "bias_correction": corrected,
                           "seconds": round(seconds, 2)}
                    for split, (x, y) in sets.items():
                        pred = predictions(res.path, backend, x, threads)
                        fp = ref[(backend, split)]
                        row[f"{split}_delta_pt"] = round(100.0 * float((pred == y).mean()
                                                                       - (fp == y).mean()), 2)
                        row[f"{split}_agreement"] = round(100.0 * float((pred == fp).mean()), 2)
                    rows.append(row)
                    log(json.dumps(row))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all",
                    help="a shipped subject, or 'all' (default)")
    ap.add_argument("--methods", default="minmax,percentile,entropy,mse")
    ap.add_argument("--calib", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import tempfile
    import torch
    from engine.study import machine_info, subjects
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bias_"))
    work.mkdir(parents=True, exist_ok=True)
    names = subjects() if args.model == "all" else [args.model]
    rows = []
    for name in names:
        rows += study_subject(name, args.methods.split(","), args.calib, args.threads, work,
                              lambda s: print(s, flush=True))
    info = {"models": names, "calib_images": args.calib, "machine": machine_info()}
    if args.out:
        from engine.fileio import atomic_write_text
        atomic_write_text(args.out, json.dumps({"info": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
