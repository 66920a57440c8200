"""The accuracy-budget rows (``--max-drop``): ours per target, chosen on the validation split
and measured where the layout runs, and NNCF's accuracy control to the same budget."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np

from ..evaluation import engine_evaluator
from ..intervals import CONFIDENCE
from .grid import cpu_engines
from .quantize import AnchorFile, Int8File, file_key, study_targets


def budget_evaluators(target, x, threads, log: Callable[[str], None] = print):
    """Where a budget must hold: the target's engine; for the signed layout, which every
    engine runs, each CPU engine here as well (the worst drop counts)."""
    from calibration.targets import TARGETS
    names = [target] if TARGETS[target].unsigned_relu else [target] + cpu_engines()
    found = [engine_evaluator(n, x, threads, log=log) for n in dict.fromkeys(names)]
    return [e for e in found if e is not None] or None


def budget_files(fp32_path, stats, stats_seconds, calib_data, val, max_drop: float, folder,
                 name: str, threads: int, cpu_uint8: bool = True,
                 log: Callable[[str], None] = print,
                 confidence: float = CONFIDENCE) -> Dict[str, Int8File]:
    """The ``--max-drop`` files: per target, ``calibration.quantize_to_budget``, the method
    and the layers kept float chosen on the validation split ``val = (x, labels)``, the loss
    held to ``max_drop`` at ``confidence``. A target whose budget cannot be shown is logged
    and gets no row."""
    import calibration
    from calibration.errors import CalibrationError
    xv, yv = val
    files = {}
    for target in study_targets(cpu_uint8):
        t0 = time.perf_counter()
        try:
            res = calibration.quantize_to_budget(
                fp32_path, folder / f"{name}.{target}.auto.drop{max_drop:g}.onnx", xv, yv,
                max_drop=max_drop, data=calib_data, statistics=stats, method="auto",
                target=target, threads=threads, confidence=confidence,
                evaluate=budget_evaluators(target, xv, threads, log))
        except CalibrationError as e:
            log(f"  --max-drop {max_drop:g} @{target}: no file: {e}")
            continue
        b = res.budget
        files[file_key(b.method, target, f"+drop{max_drop:g}")] = Int8File(
            res.path, stats_seconds + time.perf_counter() - t0, list(b.excluded), target,
            note=f"val: {b.losses}/{b.images} lost, {b.loss:.2f} pt, "
                 f"{100 * b.confidence:g}% bound {b.bound:.2f} pt <= {max_drop:g}")
        log(f"  --max-drop {max_drop:g} @{target}: {b.method}, {b.summary()}")
    return files


def nncf_budget_file(fp32_path, calib: np.ndarray, val, max_drop: float, folder, name: str,
                     threads: int, log: Callable[[str], None] = print) -> Dict[str, AnchorFile]:
    """NNCF's accuracy-controlled quantization to the same budget on the same validation
    split (:func:`engine.anchors.nncf_accuracy_control`), run on OpenVINO."""
    from ..anchors import nncf_accuracy_control
    try:
        path, seconds = nncf_accuracy_control(fp32_path, calib, val[0], val[1], max_drop,
                                              folder, threads, name=f"{name}.nncf-ac")
    except Exception as e:  # noqa: BLE001 - a third-party tool's failure, recorded
        log(f"  nncf accuracy control failed: {type(e).__name__}: {str(e)[:200]}")
        return {}
    log(f"  nncf accuracy control ({max_drop:g} pt): {seconds:.1f} s")
    return {"anchor:nncf-ac": AnchorFile(
        "nncf-ac", f"nncf-ac{max_drop:g}", Path(path), seconds, ("openvino",),
        note=f"budget {max_drop:g} pt on {len(val[0])} val images; @299 not measured")}
