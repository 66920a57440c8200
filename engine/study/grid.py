"""The study's grid: which (engine, precision) pairs are studied, and the rows of every
engine on every file."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .evaluation import Bench
from .quantize import AnchorFile, Int8File
from .row import Row


def engines_available(requested: Optional[Sequence[str]] = None) -> List[tuple]:
    """(backend, precision) pairs to study: float precisions; INT8 is added per method."""
    from kernels.env import cuda_usable
    from .. import backends as B
    pairs = []
    wanted = list(requested) if requested else ["openvino", "onnxruntime", "tensorrt", "triton"]
    gpu = cuda_usable()
    for name in wanted:
        ok, why = B.check_available(name)
        if not ok:
            continue
        if name == "triton" and not gpu and not requested:
            continue  # on CPU it would run under the interpreter: for tests, not for a study
        if name == "openvino":
            from ..backends.openvino import supports
            pairs += [("openvino", "fp32")] + ([("openvino", "bf16")] if supports("bf16") else [])
        elif name == "onnxruntime":
            pairs.append(("onnxruntime", "fp32"))
        elif name in ("tensorrt", "triton"):
            pairs += [(name, "fp16")]
    return pairs


def engine_rows(bench: Bench, fp32_path, int8: Dict[str, Int8File], big_files,
                engines: Optional[Sequence[str]] = None,
                anchors: Optional[Dict[str, AnchorFile]] = None) -> List[Row]:
    """Every available engine on the FP32 file, and on each INT8 file it can run: GPU engines
    on the signed files only; CPU engines on every layout, to show what the target costs;
    each anchor's file on the engines it names."""
    from calibration.targets import TARGETS
    rows = []
    for backend, precision in engines_available(engines):
        rows.append(bench.engine_row(backend, precision, "-", fp32_path, big_files.get("fp32")))
        if precision == "bf16":
            continue
        for key, f in int8.items():
            if TARGETS[f.target].unsigned_relu and backend not in ("openvino", "onnxruntime"):
                continue
            row = bench.engine_row(backend, "int8", key.split("@")[0], f.path,
                                   big_files.get(key), f.calib_seconds, f.excluded,
                                   target=f.target, quantizer="ours")
            row.note = row.note or f.note
            rows.append(row)
        for key, a in (anchors or {}).items():
            if backend in a.engines:
                row = bench.engine_row(backend, "int8", a.method, a.path, big_files.get(key),
                                       a.calib_seconds, as_file=True, quantizer=a.anchor)
                row.note = row.note or a.note
                rows.append(row)
    return rows
