"""The INT8 quantizers a user would otherwise pick ("anchors"), run beside ours in the study.

Each entry of :data:`ANCHORS` names a third-party post-training quantizer, the Python modules
it needs, how to install them, the engines its file runs on, and a function::

    quantize(fp32_onnx_path, calib, folder, threads, name=None) -> (path, seconds)

that writes the quantized file into ``folder`` from ``calib`` (float32 NCHW model input: the
study's own calibration images, so every quantizer sees the same ones) and returns its path
and the wall time the quantizer took. Adding an anchor is one entry.

- ``nncf``, ``nncf-mixed``: NNCF's ``nncf.quantize`` on the OpenVINO model read from the
  ONNX file (default preset: symmetric activations; MIXED: asymmetric activations, symmetric
  weights), saved as OpenVINO IR ``.xml`` with float weights kept FP32 (no FP16 compression,
  so file size and the float layers compare like with like).
- ``ort-qdq-symmetric``, ``ort-default``: ONNX Runtime's ``quantize_static`` (MinMax
  calibration); QDQ ONNX.
- ``modelopt``: NVIDIA ModelOpt's ONNX PTQ (``max`` calibration, int8). Its ``[onnx]`` extra
  installs ``onnxruntime-gpu``, which must not replace the CPU ``onnxruntime`` this project
  runs on, so it runs in a child process: the interpreter named by
  ``INCEPTION_MODELOPT_PYTHON`` (a separate environment), or this one when ``modelopt``
  imports here.

:func:`nncf_accuracy_control` is NNCF's answer to ``--max-drop``: it needs a validation split,
so it is not an entry of the table.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import BackendUnavailableError, EngineError, InputError
from .fileio import atomic_path

MODELOPT_ENV = "INCEPTION_MODELOPT_PYTHON"
# The module of the ``anchors`` extra (setup.py) that opts a study into its anchors by default:
# ONNX Runtime's quantizer ships with the CPU engine itself, and a plain study must not get
# slower because it is there
EXTRA_MODULE = "nncf"
NNCF_BATCH = 32          # images per item of the NNCF calibration dataset


@dataclass(frozen=True)
class Anchor:
    name: str
    requires: Tuple[str, ...]        # top-level import names it needs
    install: str                     # how to get them
    engines: Tuple[str, ...]         # the engines its file runs on, in the study
    quantize: Callable               # (fp32, calib, folder, threads, name=None) -> (path, s)
    method: str                      # its calibration, in the study's method column
    description: str = ""
    probe: Optional[Callable[[], Tuple[bool, str]]] = None  # beyond "the modules import"


# ----------------------------------------------------------------------------- helpers
def _output(fp32_path, folder, anchor: str, suffix: str, name: Optional[str]) -> Path:
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / f"{name or Path(fp32_path).stem + '.' + anchor}{suffix}"


def _calib_array(calib) -> np.ndarray:
    calib = np.ascontiguousarray(calib, np.float32)
    if calib.ndim != 4 or not len(calib):
        raise InputError(f"anchor calibration images must be a float32 NCHW array of at least "
                         f"one image, got shape {calib.shape}")
    return calib


def _save_ir(model, path: Path) -> Path:
    """Save an OpenVINO model as ``path`` (.xml) and its .bin, each renamed into place
    complete; the .xml, which is what gets opened, last."""
    import openvino as ov
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmp:
        ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        os.replace(Path(tmp) / "model.bin", path.with_suffix(".bin"))
        os.replace(Path(tmp) / "model.xml", path)
    return path


def _nncf_dataset(calib: np.ndarray):
    """``(nncf.Dataset of batches, subset_size)``: NNCF counts its subset in dataset items,
    so the subset is every batch, hence every image."""
    import nncf
    items = [calib[i:i + NNCF_BATCH] for i in range(0, len(calib), NNCF_BATCH)]
    return nncf.Dataset(items), len(items)


# ----------------------------------------------------------------------------- NNCF
def _nncf(preset_name: Optional[str], anchor: str):
    def quantize(fp32_path, calib, folder, threads, name=None):
        import nncf
        import openvino as ov
        calib = _calib_array(calib)
        options = {} if preset_name is None else {
            "preset": getattr(nncf.QuantizationPreset, preset_name)}
        t0 = time.perf_counter()
        dataset, subset = _nncf_dataset(calib)
        model = nncf.quantize(ov.Core().read_model(str(fp32_path)), dataset,
                              subset_size=subset, **options)
        seconds = time.perf_counter() - t0
        return _save_ir(model, _output(fp32_path, folder, anchor, ".xml", name)), seconds
    return quantize


def nncf_accuracy_control(fp32_path, calib, val_x: np.ndarray, val_y: np.ndarray,
                          max_drop: float, folder, threads=None, name=None):
    """NNCF's ``quantize_with_accuracy_control``: INT8, with layers reverted to float until
    top-1 on ``(val_x, val_y)`` is within ``max_drop`` points of FP32 (NNCF's metric is the
    fraction we return, so its ``max_drop`` is ours / 100, ``DropType.ABSOLUTE``). Returns
    ``(path of the .xml, seconds)``; OpenVINO runs it."""
    import nncf
    import openvino as ov
    calib = _calib_array(calib)
    items = [(val_x[i:i + 1], int(val_y[i])) for i in range(len(val_x))]

    def top1(compiled, data):
        output = compiled.outputs[0]
        hits = [float(np.argmax(compiled(x)[output], 1)[0] == y) for x, y in data]
        return float(np.mean(hits)), hits

    dataset, subset = _nncf_dataset(calib)
    t0 = time.perf_counter()
    model = nncf.quantize_with_accuracy_control(
        ov.Core().read_model(str(fp32_path)), dataset,
        nncf.Dataset(items, lambda item: item[0]), top1, max_drop=max_drop / 100.0,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=subset)
    seconds = time.perf_counter() - t0
    return _save_ir(model, _output(fp32_path, folder, "nncf-ac", ".xml", name)), seconds


# ----------------------------------------------------------------------------- ONNX Runtime
def _ort_reader(fp32_path, calib: np.ndarray):
    """An ONNX Runtime ``CalibrationDataReader`` over ``calib``, a batch at a time."""
    from onnxruntime.quantization import CalibrationDataReader
    from .onnxmeta import load_onnx, onnx_io
    input_name = onnx_io(load_onnx(fp32_path, load_weights=False))["inputs"][0]["name"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(range(0, len(calib), NNCF_BATCH))

        def get_next(self):
            start = next(self._batches, None)
            return None if start is None else {input_name: calib[start:start + NNCF_BATCH]}
    return Reader()


def _ort(anchor: str, options: Callable[[], dict] = dict):
    """``quantize_static`` after ``quant_pre_process`` (shape inference and graph
    optimization), the sequence ONNX Runtime's quantization docs recommend; both run offline.
    ONNX Runtime's calibration session takes all cores (it has no thread option)."""
    def quantize(fp32_path, calib, folder, threads, name=None):
        from onnxruntime.quantization import quant_pre_process, quantize_static
        calib = _calib_array(calib)
        out = _output(fp32_path, folder, anchor, ".onnx", name)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".{out.stem}.", dir=out.parent) as tmp, \
                atomic_path(out, suffix=".onnx") as dest:
            pre = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(fp32_path), str(pre))
            quantize_static(str(pre), str(dest), _ort_reader(fp32_path, calib), **options())
        return out, time.perf_counter() - t0
    return quantize


def _ort_symmetric_options():
    from onnxruntime.quantization import QuantFormat, QuantType
    return dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=True,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


# ----------------------------------------------------------------------------- ModelOpt
# Runs under ModelOpt's interpreter: argv = model, output, cache or "-", calibration .npy
MODELOPT_SCRIPT = r'''
import sys
import numpy as np
from modelopt.onnx.quantization import quantize
model, output, cache, data = sys.argv[1:5]
options = dict(quantize_mode="int8", calibration_eps=["cpu"], high_precision_dtype="fp32",
               output_path=output, calibration_data=np.load(data), calibration_method="max")
if cache != "-":
    options["calibration_cache_path"] = cache
quantize(model, **options)
'''


def modelopt_python() -> Optional[str]:
    """The interpreter that runs ModelOpt: ``$INCEPTION_MODELOPT_PYTHON``, else this one when
    ``modelopt`` imports here, else None."""
    given = os.environ.get(MODELOPT_ENV)
    if given:
        return given
    return sys.executable if importlib.util.find_spec("modelopt") is not None else None


@functools.lru_cache(maxsize=None)
def _interpreter_has_modelopt(python: str) -> Tuple[bool, str]:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('modelopt') is None)"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{MODELOPT_ENV}={python} cannot be run ({e})"
    if proc.returncode:
        return False, f"{python} has no modelopt package"
    return True, "available"


def _modelopt_probe() -> Tuple[bool, str]:
    python = modelopt_python()
    if python is None:
        return False, f"modelopt does not import here and {MODELOPT_ENV} is not set"
    return _interpreter_has_modelopt(python)


def run_modelopt(model, output, calib_npy, cache=None, timeout: float = 900) -> Path:
    """ModelOpt's INT8 ONNX quantization of ``model`` into ``output``, in a child process
    (:func:`modelopt_python`), calibrated on the images of ``calib_npy`` (or with the scales
    of a TensorRT calibration ``cache``). Raises EngineError with ModelOpt's error output."""
    python = modelopt_python()
    if python is None:
        raise BackendUnavailableError(f"ModelOpt is not available: {ANCHORS['modelopt'].install}")
    with tempfile.TemporaryDirectory(prefix="modelopt-") as tmp:
        script = Path(tmp) / "run_modelopt.py"
        script.write_text(MODELOPT_SCRIPT)
        proc = subprocess.run([python, str(script), str(model), str(output),
                               str(cache) if cache else "-", str(calib_npy)],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise EngineError(f"ModelOpt failed on {model} (exit {proc.returncode}):\n"
                          f"{proc.stderr[-3000:]}")
    return Path(output)


def _modelopt(fp32_path, calib, folder, threads, name=None):
    calib = _calib_array(calib)
    out = _output(fp32_path, folder, "modelopt", ".onnx", name)
    with tempfile.TemporaryDirectory(prefix=".modelopt-calib.", dir=folder) as tmp:
        data = Path(tmp) / "calib.npy"
        np.save(data, calib)
        t0 = time.perf_counter()      # the child's start-up counts: it is what a user waits
        with atomic_path(out, suffix=".onnx") as dest:
            run_modelopt(fp32_path, dest, data)
        seconds = time.perf_counter() - t0
    return out, seconds


# ----------------------------------------------------------------------------- the table
_ORT_INSTALL = "pip install onnxruntime (the CPU package; pip install -e .[anchors])"
_NNCF_INSTALL = "pip install nncf openvino (or pip install -e .[anchors])"

ANCHORS: Dict[str, Anchor] = {a.name: a for a in [
    Anchor("nncf", ("nncf", "openvino"), _NNCF_INSTALL, ("openvino",), _nncf(None, "nncf"),
           "nncf-default", "NNCF post-training quantization, default preset"),
    Anchor("nncf-mixed", ("nncf", "openvino"), _NNCF_INSTALL, ("openvino",),
           _nncf("MIXED", "nncf-mixed"), "nncf-mixed",
           "NNCF post-training quantization, MIXED preset (asymmetric activations)"),
    Anchor("ort-qdq-symmetric", ("onnxruntime",), _ORT_INSTALL, ("onnxruntime", "openvino"),
           _ort("ort-qdq-symmetric", _ort_symmetric_options), "minmax-sym",
           "ONNX Runtime quantize_static: QDQ, int8 per-channel, symmetric, MinMax"),
    Anchor("ort-default", ("onnxruntime",), _ORT_INSTALL, ("onnxruntime", "openvino"),
           _ort("ort-default"), "minmax",
           "ONNX Runtime quantize_static with its defaults (QDQ, MinMax, per-tensor)"),
    Anchor("modelopt", (), f"create a separate environment with `pip install "
           f"nvidia-modelopt[onnx]` (its onnxruntime-gpu must not replace the CPU onnxruntime "
           f"here) and set {MODELOPT_ENV} to its python", ("onnxruntime", "openvino"),
           _modelopt, "max", "NVIDIA ModelOpt ONNX PTQ, int8, max calibration",
           probe=_modelopt_probe),
]}


def check_anchor(name: str) -> Tuple[bool, str]:
    """``(usable, reason)`` for a known anchor: its modules can be found (and its probe
    agrees)."""
    anchor = ANCHORS[name]
    missing = [m for m in anchor.requires if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{', '.join(missing)} not installed"
    return anchor.probe() if anchor.probe else (True, "available")


def available_anchors(requested: Optional[Sequence[str]] = None) -> List[str]:
    """The anchors to run: exactly ``requested``, each checked (an unknown name is an
    InputError listing the valid ones, a requested one that is not installed a
    BackendUnavailableError saying how to install it); or, with ``requested`` None, every
    installed one once the ``anchors`` extra is installed (:data:`EXTRA_MODULE`), else none."""
    if requested is None:
        if importlib.util.find_spec(EXTRA_MODULE) is None:
            return []
        return [n for n in ANCHORS if check_anchor(n)[0]]
    unknown = [n for n in requested if n not in ANCHORS]
    if unknown:
        raise InputError(f"unknown anchor {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(ANCHORS)}")
    for name in requested:
        ok, why = check_anchor(name)
        if not ok:
            raise BackendUnavailableError(f"anchor {name} is not usable here ({why}); "
                                          f"{ANCHORS[name].install}; or drop it from --anchors")
    return list(dict.fromkeys(requested))
