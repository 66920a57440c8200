"""INT8 accuracy of our per-target files beside the third-party quantizers, and ``--max-drop``.

A thin front to the study (:func:`engine.study.run_study`, quantizers in
:mod:`engine.anchors`): the shipped IR-v2 subject (or ``--model``) on the CPU engines, the
same calibration images for every quantizer (the first ``--calib`` of the shipped split), the
whole shipped test set, every installed anchor, and the ``--max-drop`` rows (ours per target,
NNCF's accuracy control) chosen on the shipped validation split. The study's own outputs
(report.md, results.csv, pareto.png) go to ``--workdir``; ``--out`` gets the accuracy
columns of its rows as JSON.

    python benchmarks/anchors.py --out benchmarks/results/anchors.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEPT = ("quantizer", "engine", "precision", "method", "target", "top1", "top1_delta_vs_fp32",
        "agreement", "latency_ms", "latency_vs_torch", "calib_seconds", "excluded", "note")


def main(argv=None):
    from engine.commands import in_range, positive_int
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="inception_resnet_v2_fmnist")
    ap.add_argument("--methods", default="minmax,percentile,mse")
    ap.add_argument("--anchors", help="comma list (default: every installed one)")
    ap.add_argument("--calib", type=positive_int, default=1000)
    ap.add_argument("--num-test", type=positive_int, default=None)
    ap.add_argument("--max-drop", type=in_range(0.0, 100.0, low_open=False), default=0.1)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from engine.fileio import atomic_write_text
    from engine.study import run_study
    work = Path(args.workdir or tempfile.mkdtemp(prefix="anchors_"))
    rows = run_study(model=args.model, out=work, methods=args.methods.split(","),
                     engines=("openvino", "onnxruntime"), num_test=args.num_test,
                     num_calib=args.calib, threads=args.threads, big=False,
                     anchors=args.anchors.split(",") if args.anchors else None,
                     max_drop=args.max_drop)
    kept = [{k: r.get(k) for k in KEPT} for r in rows]
    meta = json.loads((work / "meta.json").read_text())
    if args.out:
        atomic_write_text(args.out, json.dumps({"info": meta, "rows": kept}, indent=1) + "\n")
    print(f"study outputs in {work}")


if __name__ == "__main__":
    main()
