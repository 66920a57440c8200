"""The INT8 accuracy-versus-speed study: ``inception-engine study``.

For one model and one labelled test set, and for each engine and precision available on the
machine (OpenVINO FP32/BF16/INT8, ONNX Runtime FP32/INT8, TensorRT and the Triton engine
where present) and each calibration method, it measures:

- top-1 accuracy on the held-out test set and agreement (%) with the PyTorch FP32 reference;
- calibration time;
- batch-1 latency (median) at the model's own input size, and at the canonical 299x299 shape
  of its architecture at full width (random weights: speed does not depend on the values);
- batch-8 throughput and the model file's size.

The PyTorch eager FP32 reference is the baseline row, measured in the same run. Output
(``--out DIR``): ``results.json`` (a list of rows), ``results.csv``, ``report.md`` and
``pareto.png`` (accuracy vs latency).

Each INT8 method gets one file per Q/DQ layout from one calibration pass
(``calibration.quantize_targets``): the signed file (target tensorrt: what TensorRT, Triton
and ONNX Runtime run) and OpenVINO's uint8-after-ReLU file (target openvino, CPU engines only);
the ``target`` column names it.

Beside ours, each third-party quantizer installed here (:mod:`engine.anchors`: NNCF, ONNX
Runtime's ``quantize_static``, NVIDIA ModelOpt; ``anchors=`` / ``--anchors`` chooses,
``--no-anchors`` skips) quantizes the same FP32 export from the same calibration images, and
its file is measured like ours on the engines it names (the 299 figure too); the
``quantizer`` column says whose file a row is ("ours", the anchor's name, "-" for float).
``max_drop`` (``--max-drop PT``) adds the accuracy-budget rows: per target,
``calibration.quantize_to_budget`` (``method="auto"``) with the method and the layers kept
float chosen on the
validation split (the worst drop over the CPU engines that run the layout counts), and NNCF's
``quantize_with_accuracy_control`` to the same budget on the same split.

Defaults study the shipped subject: Inception-ResNet-v2 at width 0.25 trained on Fashion-MNIST
(75x75), its bundled checkpoint, the shipped 10k test set and the 2k calibration split drawn
from the train set. ``--model inception_v4_fmnist`` / ``inception_resnet_v1_fmnist`` study the
other shipped subjects, ``--model all`` all three, with a comparison (:func:`run_study`). ``--model/--weights/--data/--calib`` study a user's model and data.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from calibration.methods import METHODS

from .anchors import ANCHORS, available_anchors
from .errors import InputError
from .intervals import CONFIDENCE, METHOD_BOUND, METHOD_DELTA, METHOD_PROPORTION
from .runtime import count_option

SUBJECT = "inception_resnet_v2_fmnist"


@dataclass
class Row:
    engine: str
    precision: str
    method: str                       # calibration method, "-" for float rows; "+autoK": K
                                      # layers kept float
    top1: Optional[float] = None      # %
    agreement: Optional[float] = None  # % of test images with the FP32 reference's top-1
    latency_ms: Optional[float] = None  # batch 1, model's own input size (median)
    latency_ms_299: Optional[float] = None  # batch 1, the architecture at 299 (median)
    throughput: Optional[float] = None  # img/s at the eval batch size, model's own size
    calib_seconds: Optional[float] = None
    excluded: List[str] = field(default_factory=list)
    note: str = ""
    target: str = "-"                 # the engine the Q/DQ file was written for (its layout)
    throughput_b8: Optional[float] = None  # img/s at batch 8, model's own size (median)
    file_mb: Optional[float] = None   # size of the model file, MB
    quantizer: str = "-"              # who wrote the INT8 file: "ours" or an anchor's name
                                      # (engine.anchors); "-" for float rows
    pred: Optional[np.ndarray] = field(default=None, repr=False)  # top-1 per test image;
                                      # written to predictions.npz, not to results.json


# ----------------------------------------------------------------------------- data
def load_eval_data(data, config, limit=None):
    """(x float32 NCHW, labels int64). Default: the shipped Fashion-MNIST test set.

    data: None, an ``.npz`` with ``images`` (uint8 images, made model input by
    :func:`engine.datasets.to_model_input` like ``--calib`` arrays, or float32 NCHW already
    preprocessed) and ``labels``, or a folder with one sub-folder of images per class (sorted
    sub-folder names are the class indices).
    """
    import torch
    from .datasets import fashion_mnist, to_model_input
    from .preprocess import preprocess
    if data is None:
        images, labels = fashion_mnist("test", limit=limit)
        return to_model_input(images, config).numpy(), labels.astype(np.int64)
    path = Path(data)
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir())
        if not classes:
            raise InputError(f"{path}: expected one sub-folder of images per class")
        xs, ys = [], []
        for idx, folder in enumerate(classes):
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    xs.append(preprocess(f, config))
                    ys.append(idx)
        if not xs:
            raise InputError(f"{path}: no images found in the class folders")
        x, y = torch.cat(xs).numpy(), np.asarray(ys, np.int64)
    elif path.suffix == ".npz" and path.is_file():
        from .fileio import load_npz
        z = load_npz(path)
        if "images" not in z or "labels" not in z:
            raise InputError(f"{path}: expected arrays 'images' and 'labels', found {list(z)}")
        images, y = z["images"], z["labels"].astype(np.int64)
        if images.dtype == np.uint8:
            x = to_model_input(images, config).numpy()
        elif images.dtype == np.float32 and images.ndim == 4:
            x = images
        else:
            raise InputError(f"{path}: 'images' must be uint8 images (N, H, W) or (N, H, W, C), "
                             f"or float32 NCHW model input, got {images.dtype} {images.shape}")
    else:
        raise InputError(f"--data {path}: expected a .npz file or a folder of class folders")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) != len(y) or not len(x):
        raise InputError(f"{data}: {len(x)} images and {len(y)} labels")
    return np.ascontiguousarray(x, np.float32), y


def validation_data(data, config, limit=None):
    """(x, labels) of the validation split that chooses an accuracy budget: ``data`` (as
    :func:`load_eval_data` reads it), or the shipped one for a Fashion-MNIST subject."""
    from .datasets import fashion_mnist, to_model_input
    if data is not None:
        return load_eval_data(data, config, limit)
    if config is None or config.labels != "fashion_mnist":
        raise InputError("an accuracy budget is chosen on a labelled validation split: pass "
                         "one (--val FILE.npz or a folder of class folders), disjoint from "
                         "the test set")
    images, labels = fashion_mnist("val", limit=limit)
    return to_model_input(images, config).numpy(), labels.astype(np.int64)


def engine_evaluator(backend: str, x: np.ndarray, threads: Optional[int] = None,
                     batch: int = 64, log: Callable[[str], None] = print) -> Optional[Callable]:
    """``path -> logits of x`` on ``backend`` (the engine a Q/DQ file is for), or None when
    that engine is not usable here (the budget is then measured on ONNX Runtime)."""
    from . import backends as B
    from .loader import load
    ok, why = B.check_available(backend)
    if not ok:
        log(f"  {backend} is not usable here ({why}); the budget is measured on ONNX Runtime")
        return None

    def evaluate(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the FP32 reference has no target
            with load(path, backend=backend, threads=threads) as rt:
                return predict(rt, x, batch)
    return evaluate


def default_calib(config, limit):
    from .datasets import fashion_mnist, to_model_input
    images, _ = fashion_mnist("calib", limit=limit)
    return to_model_input(images, config).numpy()


# ----------------------------------------------------------------------------- measuring
def predict(fn: Callable, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits for all of x, in batches."""
    from tqdm import tqdm
    batch = count_option("batch", batch, allow_none=False)
    starts = tqdm(range(0, len(x), batch), desc="evaluating", unit="batch", leave=False,
                  disable=None)            # None: shown on a terminal only
    outs = [np.asarray(fn(x[i:i + batch])) for i in starts]
    return np.concatenate(outs, 0)


def latency_ms(fn: Callable, x: np.ndarray, iters: int = 20, warmup: int = 3) -> float:
    """Median batch latency of ``fn(x)`` in ms (:func:`engine.timing.median_ms`)."""
    from .timing import median_ms
    count_option("iters", iters, allow_none=False)
    count_option("warmup", warmup, minimum=0, allow_none=False)
    return median_ms(lambda: fn(x), iters=iters, warmup=warmup)


def _torch_fn(model):
    import torch

    def fn(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return fn


def machine_info() -> dict:
    import torch
    from .timing import cpu_model
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


@dataclass
class Bench:
    """What every row is measured on: the labelled test set, the FP32 reference's top-1, and
    the batch-1 inputs at the model's own size (``x1``) and at 299 (``x299``)."""

    x_test: np.ndarray
    y_test: np.ndarray
    threads: int = 2
    iters: int = 20
    eval_batch: int = 64
    ref_pred: Optional[np.ndarray] = None
    x299: Optional[np.ndarray] = None
    log: Callable[[str], None] = print

    @property
    def x1(self) -> np.ndarray:
        return self.x_test[:1]

    @property
    def iters_299(self) -> int:
        return max(5, self.iters // 2)

    def batch8_throughput(self, fn) -> float:
        """img/s of ``fn`` on batches of 8 (median call time)."""
        x8 = self.x_test[:8]
        return len(x8) / latency_ms(fn, x8, max(3, self.iters // 4), warmup=1) * 1000.0

    def score(self, logits):
        """(top-1 %, agreement % with the reference's top-1, the top-1 per image)."""
        pred = logits.argmax(1)
        return (100.0 * float((pred == self.y_test).mean()),
                100.0 * float((pred == self.ref_pred).mean()), pred)

    def torch_row(self, model) -> Row:
        """The PyTorch eager FP32 baseline; its predictions become the reference."""
        fn = _torch_fn(model)
        logits = predict(fn, self.x_test, self.eval_batch)
        self.ref_pred = logits.argmax(1)
        top1, agreement, pred = self.score(logits)
        row = Row("torch", "fp32", "-", top1, agreement, latency_ms(fn, self.x1, self.iters),
                  note="PyTorch eager: the baseline", throughput_b8=self.batch8_throughput(fn),
                  pred=pred,
                  file_mb=sum(t.numel() * t.element_size() for t in model.state_dict().values())
                  / 1e6)
        t = time.perf_counter()
        predict(fn, self.x_test[:self.eval_batch * 2], self.eval_batch)
        row.throughput = min(len(self.x_test), self.eval_batch * 2) / (time.perf_counter() - t)
        self.log(f"  torch fp32: top1 {row.top1:.2f}%  {row.latency_ms:.2f} ms")
        return row

    def delta_text(self, pred) -> str:
        """`` (Δ -0.12 pt, 95% CI [-0.25, 0.01])`` against the reference, for the log."""
        if pred is None or self.ref_pred is None:
            return ""
        from .intervals import Paired
        paired = Paired.from_predictions(self.ref_pred, pred, self.y_test)
        lo, hi = paired.delta_interval()
        return f" (Δ {paired.delta_pt:+.2f} pt, 95% CI [{lo:+.2f}, {hi:+.2f}])"

    def open(self, path, backend, precision):
        """``engine.load`` without its target-mismatch advice (the study runs every target's
        file on every engine on purpose, and each row's ``target`` says which layout it is),
        nor its unknown-config notice (an anchor's file carries no config of ours; the study
        knows its model)."""
        from .loader import ConfigUnknownWarning, TargetMismatchWarning, load
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TargetMismatchWarning)
            warnings.simplefilter("ignore", ConfigUnknownWarning)
            return load(path, backend=backend, precision=precision, threads=self.threads)

    def engine_row(self, backend, precision, method, path, big_path=None, calib_s=None,
                   excluded=(), as_file: bool = False, target: str = "-",
                   quantizer: str = "-") -> Row:
        """One engine on one file: accuracy, latency, throughput (and latency at 299).

        as_file: open the file at its own precision (an anchor's OpenVINO IR carries no
        precision record: OpenVINO runs its FakeQuantize layers in INT8 by itself)."""
        row = Row(backend, precision, method, calib_seconds=calib_s, excluded=list(excluded),
                  file_mb=_file_mb(path), target=target, quantizer=quantizer)
        opened = None if as_file else precision
        try:
            with self.open(path, backend, opened) as rt:
                row.top1, row.agreement, row.pred = self.score(
                    predict(rt, self.x_test, self.eval_batch))
                row.latency_ms = latency_ms(rt, self.x1, self.iters)
                row.throughput_b8 = self.batch8_throughput(rt)
                t0 = time.perf_counter()
                rt(self.x_test[:self.eval_batch])
                row.throughput = self.eval_batch / (time.perf_counter() - t0)
            if big_path is not None:
                with self.open(big_path, backend, opened) as rt:
                    row.latency_ms_299 = latency_ms(rt, self.x299, self.iters_299)
        except Exception as e:  # one engine failing must not sink the study: record why
            row.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        name = method if precision != "int8" else (
            f"{method}@{target}" if quantizer == "ours" else f"{quantizer} ({method})")
        big = "" if row.latency_ms_299 is None else f"  @299 {row.latency_ms_299:.1f} ms"
        self.log(f"  {backend} {precision} {name}: top1 {_rounded(row.top1, 2)}"
                 f"{self.delta_text(row.pred)}  {_rounded(row.latency_ms, 2)} ms{big} "
                 f"{row.note}".rstrip())
        return row


def _file_mb(path) -> float:
    """Size of a model file in MB, with an OpenVINO IR's weights (.bin) counted."""
    path = Path(path)
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return (path.stat().st_size + (weights.stat().st_size if weights and weights.is_file()
                                   else 0)) / 1e6


def _rounded(value, digits):
    return value if value is None else round(value, digits)


# ----------------------------------------------------------------------------- the study
def engines_available(requested: Optional[Sequence[str]] = None) -> List[tuple]:
    """(backend, precision) pairs to study: float precisions; INT8 is added per method."""
    from kernels.env import cuda_usable
    from . import backends as B
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
            from .backends.openvino import supports
            pairs += [("openvino", "fp32")] + ([("openvino", "bf16")] if supports("bf16") else [])
        elif name == "onnxruntime":
            pairs.append(("onnxruntime", "fp32"))
        elif name in ("tensorrt", "triton"):
            pairs += [(name, "fp16")]
    return pairs


@dataclass
class Int8File:
    """A quantized file of the study: its path, target engine, calibration seconds, layers
    kept float."""

    path: Path
    calib_seconds: float
    excluded: List[str] = field(default_factory=list)
    target: str = "tensorrt"
    note: str = ""


@dataclass
class AnchorFile:
    """A file written by a third-party quantizer (:mod:`engine.anchors`) and the engines it
    is run on."""

    anchor: str
    method: str
    path: Path
    calib_seconds: float
    engines: Sequence[str]
    note: str = ""


def study_targets(cpu_uint8: bool = True) -> List[str]:
    """One target per distinct Q/DQ layout: the signed file every engine runs, and (with
    ``cpu_uint8``) OpenVINO's uint8-after-ReLU file."""
    return ["tensorrt", "openvino"] if cpu_uint8 else ["tensorrt"]


def file_key(method: str, target: str, suffix: str = "") -> str:
    """The study's name of one INT8 file: ``method[+autoK]@target``."""
    return f"{method}{suffix}@{target}"


def quantize_methods(fp32_path, stats, stats_seconds, methods, folder, name, cpu_uint8=True,
                     log: Callable[[str], None] = print, calib_data=None,
                     threads: Optional[int] = None) -> Dict[str, Int8File]:
    """One INT8 file per method and target layout, all from one statistics pass; each file
    gets calibration's defaults, bias correction included where the target wants it for the
    method (it reads ``calib_data`` again)."""
    import calibration
    files: Dict[str, Int8File] = {}
    targets = study_targets(cpu_uint8)
    for m in methods:
        res = calibration.quantize_targets(
            fp32_path, {t: folder / f"{name}.{t}.{m}.onnx" for t in targets},
            data=calib_data, statistics=stats, method=m, threads=threads)
        for t, r in res.items():
            note = "bias-corrected" if r.bias_correction else ""
            files[file_key(m, t)] = Int8File(r.path, stats_seconds + r.seconds, target=t,
                                             note=note)
        log(f"  calibrated {m} in {files[file_key(m, targets[0])].calib_seconds:.1f} s")
    return files


def quantize_auto_excluded(fp32_path, stats, stats_seconds, calib_data, methods, count, folder,
                           name, num_calib, threads, cpu_uint8=True) -> Dict[str, Int8File]:
    """The ``+autoK`` files: the K most sensitive layers kept float."""
    import calibration
    # mse is the most robust range here (entropy clips a spike-shaped histogram hard:
    # see benchmarks/RESULTS.md); auto-exclusion then removes what is left
    method = "mse" if "mse" in methods else methods[0]
    res = calibration.quantize_targets(
        fp32_path, {t: folder / f"{name}.{t}.{method}.auto{count}.onnx"
                    for t in study_targets(cpu_uint8)},
        data=calib_data, statistics=stats, method=method, auto_exclude=count,
        num_images=num_calib, threads=threads)
    return {file_key(method, t, f"+auto{count}"):
            Int8File(r.path, stats_seconds + r.seconds, list(r.auto_excluded), t)
            for t, r in res.items()}


def big_model_files(int8: Dict[str, Int8File], folder, threads, arch: str = "inception_resnet_v2",
                    anchors: Optional[Dict[str, AnchorFile]] = None,
                    log: Callable[[str], None] = print):
    """The canonical 299 shape: the subject's architecture at full size with random weights,
    exported FP32 and quantized like each study file (the same layers kept float), and by
    each anchor that wrote one. Returns ``(model, {"fp32", file key or anchor key: path})``."""
    import torch
    import calibration
    from .export import export_onnx
    from .models.registry import create_model, get_config
    big_model = create_model(arch)
    big_fp32 = export_onnx(big_model, folder / f"{arch}_299.onnx")
    # speed does not depend on the scale values: calibrate on a few shipped images
    big_calib = torch.nn.functional.interpolate(
        torch.from_numpy(default_calib(get_config(SUBJECT), 8)), size=(299, 299),
        mode="bilinear", align_corners=False).numpy()
    big_stats = calibration.collect_statistics(big_fp32, big_calib, threads=threads)
    files = {"fp32": big_fp32}
    for key, f in int8.items():
        method = key.split("@")[0].split("+")[0]
        files[key] = calibration.quantize(
            big_fp32, folder / f"{arch}_299.{f.target}.{key.split('@')[0]}.onnx",
            statistics=big_stats, method=method, target=f.target, exclude=f.excluded).path
    for key, a in (anchors or {}).items():
        if a.anchor in ANCHORS:     # not NNCF's accuracy control: it needs trained weights
            files[key] = _anchor_quantize(a.anchor, big_fp32, big_calib, folder, threads,
                                          f"{arch}_299.{a.anchor}", log)[0]
    return big_model, files


def _anchor_quantize(name, fp32_path, calib, folder, threads, stem, log):
    """``(path, seconds)`` of anchor ``name`` on ``fp32_path``, or ``(None, None)`` when it
    fails (logged: one quantizer failing must not sink the study)."""
    try:
        return ANCHORS[name].quantize(fp32_path, calib, folder, threads, name=stem)
    except Exception as e:  # noqa: BLE001 - a third-party tool's failure, recorded
        log(f"  anchor {name} failed on {Path(fp32_path).name}: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}")
        return None, None


def anchor_files(names: Sequence[str], fp32_path, calib: np.ndarray, folder, name: str,
                 threads: int, log: Callable[[str], None] = print) -> Dict[str, AnchorFile]:
    """One file per anchor (:mod:`engine.anchors`) from the study's calibration images."""
    files = {}
    for anchor in names:
        path, seconds = _anchor_quantize(anchor, fp32_path, calib, folder, threads,
                                         f"{name}.{anchor}", log)
        if path is not None:
            a = ANCHORS[anchor]
            files[f"anchor:{anchor}"] = AnchorFile(anchor, a.method, Path(path), seconds,
                                                   a.engines)
            log(f"  anchor {anchor}: {seconds:.1f} s")
    return files


def budget_evaluators(target, x, threads, log: Callable[[str], None] = print):
    """Where a budget must hold: the target's engine; for the signed layout, which every
    engine runs, each CPU engine here as well (the worst drop counts)."""
    names = [target] if target == "openvino" else [target, "onnxruntime", "openvino"]
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
    from .anchors import nncf_accuracy_control
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


BEST_RULE = ("Best INT8: among the INT8 rows, the fastest at batch 1 whose top-1 is not "
             "distinguishable from the most accurate one's (their own paired exact McNemar "
             "test on the test images, 95%); a row is within noise of FP32 when its Δ "
             "interval contains 0.")


def result_rows(rows: List[Row], model: str, random_weights: bool,
                labels: Optional[np.ndarray] = None) -> List[dict]:
    """The rows as dicts, with the ratios to the baseline (the first row) and, where the
    test labels and the baseline's predictions are known, each row's paired comparison with
    it (:mod:`engine.intervals`: losses, gains, Δ top-1 and agreement with their 95%
    intervals, "within noise"), and the best INT8 rows flagged (:data:`BEST_RULE`). Each
    row's predictions stay out of the dict: :func:`write_outputs` puts them in
    ``predictions.npz`` (``predictions`` names the row's array there)."""
    from .intervals import Paired
    base = rows[0]
    result = []
    for i, row in enumerate(rows):
        r = asdict(row)
        r.pop("pred")
        r["model"] = model
        r["random_weights"] = random_weights
        if base.latency_ms and r["latency_ms"]:
            r["latency_vs_torch"] = r["latency_ms"] / base.latency_ms
        if base.latency_ms_299 and r["latency_ms_299"]:
            r["latency_299_vs_torch"] = r["latency_ms_299"] / base.latency_ms_299
        if base.top1 is not None and r["top1"] is not None:
            r["top1_delta_vs_fp32"] = r["top1"] - base.top1
        if row.pred is not None:
            r["predictions"] = f"row_{i}"
            if i and labels is not None and base.pred is not None:
                paired = Paired.from_predictions(base.pred, row.pred, labels).record()
                r.update({k: paired[k] for k in ("losses", "gains", "top1_delta_ci",
                                                 "agreement_ci", "p_value", "within_noise")})
        result.append(r)
    if labels is not None:
        flag_best(result, {f"row_{i}": r.pred for i, r in enumerate(rows)}, labels)
    return result


def _indistinguishable(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> bool:
    from .intervals import Paired
    return Paired.from_predictions(a, b, labels).within_noise()


def choose_best(rows: List[dict], predictions: Dict[str, np.ndarray], labels: np.ndarray):
    """The row :data:`BEST_RULE` picks among ``rows`` (INT8 rows with a top-1 and a latency),
    or None."""
    pool = [r for r in rows if r["precision"] == "int8" and r["top1"] is not None
            and r.get("latency_ms") and predictions.get(r.get("predictions")) is not None]
    if not pool:
        return None
    top = max(pool, key=lambda r: (r["top1"], -r["latency_ms"]))
    same = [r for r in pool if r is top or _indistinguishable(
        predictions[top["predictions"]], predictions[r["predictions"]], labels)]
    return min(same, key=lambda r: (r["latency_ms"], -r["top1"]))


def flag_best(rows: List[dict], predictions: Dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Mark ``best_int8`` (over every engine) and ``best_on_engine`` (per engine)."""
    for r in rows:
        r["best_int8"] = r["best_on_engine"] = False
    best = choose_best(rows, predictions, labels)
    if best is not None:
        best["best_int8"] = True
    for engine in dict.fromkeys(r["engine"] for r in rows):
        best = choose_best([r for r in rows if r["engine"] == engine], predictions, labels)
        if best is not None:
            best["best_on_engine"] = True


def write_outputs(out: Path, result: List[dict], meta: dict,
                  log: Callable[[str], None] = print, predictions=None) -> None:
    """results.json, meta.json, results.csv, report.md, pareto.png and (with
    ``predictions``, a ``{name: array}`` dict) predictions.npz in ``out``."""
    from .fileio import atomic_path, atomic_write_text
    if predictions:
        with atomic_path(out / "predictions.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, **predictions)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    write_csv(out / "results.csv", result)
    atomic_write_text(out / "report.md", report_markdown(result, meta))
    try:
        pareto_plot(result, out / "pareto.png")
    except ImportError:
        log("  (matplotlib not installed: no pareto.png; pip install matplotlib)")
    log(f"wrote {out}/results.json, results.csv, report.md, pareto.png"
        + (", predictions.npz" if predictions else ""))


def prediction_arrays(rows: List[Row], labels: np.ndarray) -> Dict[str, np.ndarray]:
    """What predictions.npz holds: ``labels`` and each row's top-1 per test image as
    ``row_<i>`` (i: the row's index in results.json), int16."""
    arrays = {"labels": np.asarray(labels, np.int16)}
    arrays.update({f"row_{i}": np.asarray(r.pred, np.int16) for i, r in enumerate(rows)
                   if r.pred is not None})
    return arrays


def best_line(rows: List[dict]) -> Optional[str]:
    """The report's "Best INT8" sentence, from the flags of :func:`flag_best`."""
    best = next((r for r in rows if r.get("best_int8")), None)
    if best is None:
        return None
    ci = best.get("top1_delta_ci")
    interval = f", 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    noise = "; within noise of FP32" if best.get("within_noise") else ""
    return (f"Best INT8: {best['engine']} / {_int8_name(best)}: top-1 {best['top1']:.2f}% "
            f"({_fmt(best.get('top1_delta_vs_fp32'))} pt vs PyTorch FP32{interval}{noise}), "
            f"{_fmt(best.get('latency_ms'))} ms at batch 1.")


def subjects() -> List[str]:
    """The shipped study subjects: the registered variants trained on the shipped Fashion-MNIST
    data (each with a bundled checkpoint in ``engine/data/``)."""
    from .models.registry import get_config, list_models
    return [n for n in list_models() if get_config(n).labels == "fashion_mnist"]


def _study_subject(model, weights, log):
    """The reference model, the weights actually used, and whether they are random."""
    from .models.registry import create_model
    from .weights import DATA_DIR
    if weights == "bundled" and not (DATA_DIR / f"{model}.safetensors").is_file():
        weights = None
    ref = create_model(model, weights=weights)
    if weights is None:
        log("WARNING: no --weights given: the model's weights are random, so accuracies are "
            "meaningless (latency figures still hold)")
    return ref, weights


def _check_numbers(num_test, num_calib, threads, iters, auto_exclude, eval_batch) -> None:
    """Each number :func:`run_study` takes, in its range, or an InputError naming it."""
    count_option("num_test", num_test)
    for name, value in (("num_calib", num_calib), ("threads", threads), ("iters", iters),
                        ("eval_batch", eval_batch)):
        count_option(name, value, allow_none=False)
    count_option("auto_exclude", auto_exclude, minimum=0, allow_none=False)


def run_study(model: str = SUBJECT, weights="bundled", data=None, calib=None,
              out="study", log: Callable[[str], None] = print, **options) -> List[dict]:
    """Run the study and write its outputs to ``out``; returns the rows (see the module
    docstring). The baseline is the first row.

    model: a registered variant, or ``"all"``: every shipped subject (:func:`subjects`), each
    in ``out/<model>/``, then ``out/comparison.md`` and ``out/comparison.png`` side by side
    (their baselines are their own first rows). options: see :func:`study_one`.
    """
    if model != "all":
        return study_one(model, weights, data, calib, out=out, log=log, **options)
    if weights != "bundled" or data is not None or calib is not None:
        raise InputError("--model all studies the shipped subjects on the shipped data with "
                         "their bundled weights; drop --weights/--data/--calib, or name one "
                         "--model")
    rows = []
    for name in subjects():
        log(f"== {name}")
        rows += study_one(name, out=Path(out) / name, log=log, **options)
    write_comparison(Path(out), rows, log)
    return rows


def study_one(model: str = SUBJECT, weights="bundled", data=None, calib=None,
              methods: Sequence[str] = METHODS, engines: Optional[Sequence[str]] = None,
              out="study", num_test: Optional[int] = None, num_calib: int = 1000,
              threads: int = 2, iters: int = 20, big: bool = True, auto_exclude: int = 0,
              cpu_uint8: bool = True, eval_batch: int = 64,
              anchors: Optional[Sequence[str]] = None, max_drop: Optional[float] = None,
              val=None, num_val: Optional[int] = None, confidence: float = CONFIDENCE,
              log: Callable[[str], None] = print) -> List[dict]:
    """The study of one model (see :func:`run_study`).

    anchors: the third-party quantizers to run beside ours (:mod:`engine.anchors`; None:
    every installed one, ``()``: none). max_drop: add the accuracy-budget rows (points of
    top-1 lost, held with ``confidence``: :mod:`calibration.budget`), chosen on the
    validation split ``val`` (default: the shipped one; needed with a user's ``data``), its
    first ``num_val`` images.
    """
    import torch
    from .export import export_onnx

    _check_numbers(num_test, num_calib, threads, iters, auto_exclude, eval_batch)
    count_option("num_val", num_val)
    anchors = available_anchors(anchors)
    if max_drop is not None and data is not None and val is None:
        raise InputError("--max-drop chooses the layers kept float on a validation split; "
                         "with your --data pass --val FILE.npz (or a folder of class "
                         "folders), disjoint from the test set")
    torch.set_num_threads(threads)
    out = Path(out)
    folder = out / "models"
    folder.mkdir(parents=True, exist_ok=True)
    ref, weights = _study_subject(model, weights, log)
    cfg = ref.config
    if data is None and cfg.labels != "fashion_mnist":
        raise InputError(f"{model} was not trained on the shipped Fashion-MNIST data; pass "
                         "--data with your labelled test set (and --calib)")
    x_test, y_test = load_eval_data(data, cfg, num_test)
    val_set = validation_data(val, cfg, num_val) if max_drop is not None else None
    if val_set is not None:
        from calibration.budget import check_reachable
        check_reachable(max_drop, confidence, len(val_set[0]))   # before any engine runs
    calib_data = calib if calib is not None else default_calib(cfg, num_calib)
    log(f"study: {cfg.name}, {len(x_test)} test images, calibration from "
        f"{'the shipped train split' if calib is None else calib}, {threads} threads")
    fp32_path = export_onnx(ref, folder / f"{cfg.name}.onnx")
    bench = Bench(x_test, y_test, threads=threads, iters=iters, eval_batch=eval_batch, log=log)
    base = bench.torch_row(ref)

    q = Quantized(fp32_path, calib_data, num_calib, folder, cfg.name, threads, cpu_uint8, log)
    int8 = q.ours(methods, auto_exclude)
    theirs = q.anchors(anchors)
    if max_drop is not None:
        int8.update(q.budget(val_set, max_drop, confidence))
        if "nncf" in anchors:
            theirs.update(nncf_budget_file(fp32_path, q.calib_array(), val_set, max_drop,
                                           folder, cfg.name, threads, log))
    big_files = {}
    if big:
        big_model, big_files = big_model_files(int8, folder, threads, cfg.arch, theirs, log)
        bench.x299 = np.random.default_rng(0).standard_normal((1, 3, 299, 299)).astype(np.float32)
        base.latency_ms_299 = latency_ms(_torch_fn(big_model), bench.x299, bench.iters_299)
        log(f"  torch fp32 @299: {base.latency_ms_299:.1f} ms")

    rows = [base] + engine_rows(bench, fp32_path, int8, big_files, engines, theirs)
    result = result_rows(rows, cfg.name, weights is None, y_test)
    meta = {"machine": machine_info(), "model": cfg.name, "weights": str(weights),
            "test_images": int(len(x_test)), "threads": threads, "iters": iters,
            "calibration_images": num_calib, "statistics_seconds": q.stats_seconds,
            "anchors": list(anchors), "max_drop": max_drop,
            "validation_images": None if val_set is None else int(len(val_set[0])),
            "budget_confidence": confidence if max_drop is not None else None,
            "interval_methods": {"top1_delta": METHOD_DELTA, "agreement": METHOD_PROPORTION,
                                 "loss_bound": METHOD_BOUND},
            "best_rule": BEST_RULE}
    write_outputs(out, result, meta, log, prediction_arrays(rows, y_test))
    line = best_line(result)
    if line:
        log(line)
        log(f"  ({BEST_RULE})")
    return result


@dataclass
class Quantized:
    """The study's INT8 files of one FP32 export, all from one statistics pass and one set
    of calibration images."""

    fp32_path: Path
    calib_data: object            # what --calib gave (or the shipped split's array)
    num_calib: int
    folder: Path
    name: str
    threads: int
    cpu_uint8: bool = True
    log: Callable[[str], None] = print
    stats: object = None
    stats_seconds: float = 0.0

    def __post_init__(self):
        import calibration
        t = time.perf_counter()
        self.stats = calibration.collect_statistics(self.fp32_path, self.calib_data,
                                                    num_images=self.num_calib,
                                                    threads=self.threads, progress=False)
        self.stats_seconds = time.perf_counter() - t

    def calib_array(self) -> np.ndarray:
        """The calibration images the statistics saw, as one float32 NCHW array (what the
        anchors are given)."""
        import calibration
        if isinstance(self.calib_data, np.ndarray):
            return self.calib_data[:self.num_calib]
        return np.concatenate(list(calibration.batches(self.calib_data, self.fp32_path,
                                                       limit=self.num_calib)))

    def ours(self, methods, auto_exclude: int = 0) -> Dict[str, Int8File]:
        files = quantize_methods(self.fp32_path, self.stats, self.stats_seconds, methods,
                                 self.folder, self.name, self.cpu_uint8, self.log,
                                 self.calib_data, self.threads)
        if auto_exclude:
            files.update(quantize_auto_excluded(
                self.fp32_path, self.stats, self.stats_seconds, self.calib_data, methods,
                auto_exclude, self.folder, self.name, self.num_calib, self.threads,
                self.cpu_uint8))
        return files

    def anchors(self, names) -> Dict[str, AnchorFile]:
        if not names:
            return {}
        return anchor_files(names, self.fp32_path, self.calib_array(), self.folder, self.name,
                            self.threads, self.log)

    def budget(self, val, max_drop: float, confidence: float = CONFIDENCE
               ) -> Dict[str, Int8File]:
        return budget_files(self.fp32_path, self.stats, self.stats_seconds, self.calib_data,
                            val, max_drop, self.folder, self.name, self.threads,
                            self.cpu_uint8, self.log, confidence)


def _int8_name(row) -> str:
    """``method@target`` for our rows, ``anchor method`` for a third-party quantizer's."""
    if row.get("quantizer", "ours") in ("ours", "-"):
        return f"{row['method']}@{row['target']}"
    return f"{row['quantizer']} ({row['method']})"


def _best_int8(rows, engine):
    """The best INT8 row of ``engine`` by :data:`BEST_RULE` (flagged by :func:`flag_best`),
    or None."""
    return next((r for r in rows if r["engine"] == engine and r.get("best_on_engine")), None)


def _delta_cell(r) -> str:
    """``-0.12 [-0.25, +0.01] within noise`` (points, 95% interval; "within noise" of FP32
    when the interval contains 0)."""
    text = _fmt(r.get("top1_delta_vs_fp32"))
    ci = r.get("top1_delta_ci")
    if ci is None:
        return text
    return f"{text} [{ci[0]:+.2f}, {ci[1]:+.2f}]" + (" within noise" if r.get("within_noise")
                                                      else "")


def _agreement_cell(r) -> str:
    ci = r.get("agreement_ci")
    text = _fmt(r.get("agreement"))
    return text if ci is None else f"{text} [{ci[0]:.2f}, {ci[1]:.2f}]"


def comparison_markdown(rows: List[dict]) -> str:
    """One line per network and engine: FP32 top-1, the best INT8 row, its speed ratios."""
    lines = ["# INT8 study: the three networks", "",
             "Each network's baseline is its own PyTorch eager FP32 row; full tables in "
             "`<model>/report.md`.", "",
             "| network | engine | FP32 top-1 % | best INT8 (method@target, or anchor) "
             "| INT8 top-1 % "
             "| Δ pt [95% CI] | latency × torch | @299 × torch | batch-8 img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        for engine in dict.fromkeys(r["engine"] for r in mine if r["engine"] != "torch"):
            best = _best_int8(mine, engine)
            if best is None:
                continue
            lines.append("| " + " | ".join([
                model, engine, _fmt(mine[0]["top1"]), _int8_name(best),
                _fmt(best["top1"]), _delta_cell(best),
                _fmt(best.get("latency_vs_torch"), 3), _fmt(best.get("latency_299_vs_torch"), 3),
                _fmt(best.get("throughput_b8"), 1)]) + " |")
    lines += ["", f"Per engine: {BEST_RULE} Intervals: {METHOD_DELTA}."]
    return "\n".join(lines) + "\n"


def write_comparison(out: Path, rows: List[dict], log: Callable[[str], None] = print) -> None:
    """``comparison.md``, ``comparison.json`` and ``comparison.png`` for ``--model all``."""
    from .fileio import atomic_write_text
    atomic_write_text(out / "comparison.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", comparison_markdown(rows))
    try:
        comparison_plot(rows, out / "comparison.png")
    except ImportError:
        log("  (matplotlib not installed: no comparison.png; pip install matplotlib)")
    log(f"wrote {out}/comparison.md, comparison.json, comparison.png")


def comparison_plot(rows, path):
    """Accuracy drop vs latency ratio to each network's own eager FP32, one colour per
    network, one marker per engine; each network's best INT8 row per engine is labelled."""
    _save_figure(comparison_figure(rows), path)


def comparison_figure(rows):
    """The figure of :func:`comparison_plot` (labels placed, not saved)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    markers = {"openvino": "o", "onnxruntime": "s", "tensorrt": "^", "triton": "D"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    models = list(dict.fromkeys(r["model"] for r in rows))
    labels = []
    for i, model in enumerate(models):
        pts = [r for r in rows if r["model"] == model and r["precision"] == "int8"
               and r.get("latency_vs_torch") and r.get("top1_delta_vs_fp32") is not None]
        for engine in dict.fromkeys(r["engine"] for r in pts):
            mine = [r for r in pts if r["engine"] == engine]
            ax.scatter([r["latency_vs_torch"] for r in mine],
                       [r["top1_delta_vs_fp32"] for r in mine], color=f"C{i}",
                       marker=markers.get(engine, "x"), s=40, label=f"{model} {engine}")
            best = _best_int8(mine, engine)
            if best is not None:
                labels.append((best["latency_vs_torch"], best["top1_delta_vs_fp32"],
                               f"{engine}: {_int8_name(best)}"))
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("batch-1 latency × the network's PyTorch eager FP32 (own input size)")
    ax.set_ylabel("top-1 change vs FP32 (pt)")
    ax.set_title("INT8 rows of the three networks")
    ax.grid(alpha=0.3)
    label_panels(fig, [(ax, labels)])
    return fig


def _save_figure(fig, path):
    import matplotlib.pyplot as plt
    from .fileio import atomic_path
    with atomic_path(path, suffix=".png") as tmp:
        # "tight" crops to what was drawn (the legend outside the axes) without moving the
        # axes, so the label placement measured on the canvas still holds
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- labels
# Offsets tried for a label, nearest first: rings of 8 directions (points)
_LABEL_RADII = (6, 14, 24, 36, 50, 66, 84)
_LABEL_DIRECTIONS = ((1, -1), (1, 1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
LABEL_GID = "study-label"   # marks the annotations place_labels made, to redo them
MARKER_PX = 4.0     # half the size of a plotted marker, in pixels, as an obstacle for labels


def _points_of(ax) -> List:
    """The display coordinates of every scattered point of ``ax``."""
    from matplotlib.collections import PathCollection
    pts = []
    for coll in ax.collections:
        if not isinstance(coll, PathCollection):      # error bars are not points
            continue
        offsets = coll.get_offsets()
        if len(offsets):
            pts += list(ax.transData.transform(np.asarray(offsets, float)))
    return pts


def _label_box(ann, renderer):
    """The text box of an annotation, without its leader line, in display pixels."""
    from matplotlib.text import Text
    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def _label_fits(box, frame, placed, obstacles) -> bool:
    from matplotlib.transforms import Bbox
    if not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
            and box.y1 <= frame.y1):
        return False
    if any(box.overlaps(p) for p in placed):
        return False
    return not any(box.overlaps(Bbox.from_extents(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX,
                                                  y + MARKER_PX)) for x, y in obstacles)


def place_labels(ax, labels, fontsize: int = 7, obstacles=()) -> List[tuple]:
    """Annotate ``ax`` with each ``(x, y, text)`` of ``labels`` (data coordinates), in order:
    each goes to the nearest of the candidate offsets whose text box (measured with the
    renderer) stays inside the axes and overlaps no label placed before it nor any point of
    ``obstacles`` (display coordinates); a leader line joins a label set off from its point.
    Returns the labels for which no offset fits (for a key beside the plot)."""
    fig = ax.figure
    fig.canvas.draw()             # fixes the limits and the layout the boxes are measured in
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed, left = [], []
    for x, y, text in labels:
        for radius in _LABEL_RADII:
            fitted = None
            for ux, uy in _LABEL_DIRECTIONS:
                ann = ax.annotate(
                    text, (x, y), xytext=(radius * ux, radius * uy), textcoords="offset points",
                    fontsize=fontsize, ha={1: "left", -1: "right", 0: "center"}[ux],
                    va={1: "bottom", -1: "top", 0: "center"}[uy],
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="0.45", shrinkA=1,
                                    shrinkB=2) if radius > _LABEL_RADII[0] else None)
                ann.set_gid(LABEL_GID)
                box = _label_box(ann, renderer).padded(1.5)
                if _label_fits(box, frame, placed, obstacles):
                    fitted = box
                    break
                ann.remove()
            if fitted is not None:
                placed.append(fitted)
                break
        else:
            left.append((x, y, text))
    return left


def label_panels(fig, panels, rounds: int = 3) -> None:
    """Lay out ``fig`` and label each ``(ax, labels)`` of ``panels`` (:func:`place_labels`),
    the labels that find no place listed in the axes' legend, outside the axes. The legend's
    size moves the layout, so layout and placement repeat until the listed labels are the
    ones that did not fit (at most ``rounds`` times)."""
    unplaced = {id(ax): [] for ax, _ in panels}
    for _ in range(rounds):
        for ax, _ in panels:
            _legend_outside(ax, unplaced[id(ax)])
        fig.tight_layout()
        for ax, _ in panels:
            for text in [t for t in ax.texts if t.get_gid() == LABEL_GID]:
                text.remove()
        found = {id(ax): place_labels(ax, labels, obstacles=_points_of(ax))
                 for ax, labels in panels}
        if found == unplaced:
            return
        unplaced = found
    for ax, _ in panels:        # the last placement stands; list what it left out
        _legend_outside(ax, unplaced[id(ax)])


def _legend_outside(ax, unplaced=()):
    """The legend right of the axes, where it covers no point; labels that found no place
    on the plot are listed in it with their coordinates."""
    from matplotlib.lines import Line2D
    handles, names = ax.get_legend_handles_labels()
    for x, y, text in unplaced:
        handles.append(Line2D([], [], linestyle="none"))
        names.append(f"{text}: ({x:.3g}, {y:.3g})")
    if handles:
        ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)


COLUMNS = ["engine", "precision", "quantizer", "method", "target", "top1", "top1_delta_vs_fp32",
           "agreement",
           "latency_ms", "latency_vs_torch", "latency_ms_299", "latency_299_vs_torch",
           "throughput", "throughput_b8", "file_mb", "calib_seconds", "excluded", "note"]


def write_csv(path, rows):
    import io
    from .fileio import atomic_write_text
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + ["model", "random_weights"], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "excluded": " ".join(r.get("excluded") or [])})
    atomic_write_text(path, buf.getvalue())


def _fmt(v, nd=2):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def report_markdown(rows, meta) -> str:
    m = meta["machine"]
    lines = [f"# INT8 study: {meta['model']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {meta['threads']} threads; torch "
             f"{m['torch']}. Test images: {meta['test_images']}; calibration images: "
             f"{meta['calibration_images']}. Latency: batch 1, median of {meta['iters']}.", "",
             "| engine | precision | quantizer | method | target | top-1 % "
             "| Δ vs FP32 pt [95% CI] | agreement % [95% CI] | latency ms | × torch "
             "| latency @299 ms | × torch @299 | batch-8 img/s | file MB | calib s | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["engine"], r["precision"], r.get("quantizer", "-"), r["method"],
            r.get("target", "-"), _fmt(r["top1"]),
            _delta_cell(r), _agreement_cell(r), _fmt(r["latency_ms"]),
            _fmt(r.get("latency_vs_torch"), 3), _fmt(r["latency_ms_299"], 1),
            _fmt(r.get("latency_299_vs_torch"), 3), _fmt(r.get("throughput_b8"), 1),
            _fmt(r.get("file_mb"), 1), _fmt(r["calib_seconds"], 1),
            (r["note"] + (" excluded: " + ", ".join(r["excluded"]) if r["excluded"] else ""))
            .strip()]) + " |")
    lines += ["", f"Δ and agreement: paired, against the PyTorch FP32 row on the same "
              f"{meta['test_images']} test images; Δ: {METHOD_DELTA}; agreement: "
              f"{METHOD_PROPORTION}. 'within noise': of FP32 (the Δ interval contains 0). "
              "Per-image predictions: predictions.npz."]
    line = best_line(rows)
    if line:
        lines += ["", line, "", f"Rule: {BEST_RULE}"]
    if rows and rows[0].get("random_weights"):
        lines += ["", "**Weights are random: accuracy columns are meaningless.**"]
    return "\n".join(lines) + "\n"


def pareto_plot(rows, path):
    """Accuracy vs batch-1 latency (:func:`pareto_figure`), saved as a PNG at ``path``."""
    _save_figure(pareto_figure(rows), path)


_ANCHOR_MARKERS = ("v", "<", ">", "P", "X", "*", "h", "p")
_FLOAT_MARKERS = {"fp32": "o", "bf16": "s", "fp16": "D"}   # INT8 rows: the quantizer's


def _error_bar(r, base_top1):
    """(below, above) the row's top-1: its paired 95% interval on Δ, moved onto the top-1
    axis (the baseline's top-1 + the interval); None without an interval."""
    ci = r.get("top1_delta_ci")
    if ci is None or base_top1 is None or r["top1"] is None:
        return None
    delta = r["top1"] - base_top1
    return max(0.0, delta - ci[0]), max(0.0, ci[1] - delta)


def readable_log_ticks(ax, axis: str = "x") -> None:
    """Plain-number major ticks on a log axis (1, 2, 5 per decade, or a few evenly spaced
    values when the range is under a decade) and no minor labels, so labels never run
    together the way "3×10⁰4×10⁰" does."""
    from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, MaxNLocator,
                                   NullFormatter)
    which = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = [t for t in LogLocator(base=10, subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
             if lo <= t <= hi]
    if len(ticks) < 3:
        ticks = [t for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                 if lo <= t <= hi and t > 0]
    which.set_major_locator(FixedLocator(ticks))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    which.set_minor_formatter(NullFormatter())


def _pareto_front(pts, key):
    """The points no other point beats: at least as fast and at least as accurate."""
    return sorted((p for p in pts if not any(
        q is not p and q[key] <= p[key] and q["top1"] >= p["top1"] and
        (q[key] < p[key] or q["top1"] > p["top1"]) for q in pts)), key=lambda p: p[key])


def _row_label(r) -> str:
    if r["method"] == "-":
        return f"{r['engine']}/{r['precision']}"
    return f"{r['engine']}/{_int8_name(r)}"


def pareto_figure(rows):
    """Accuracy vs batch-1 latency, at the model's own size and at 299 (a panel each, when
    measured). Colour: the engine; marker: the float precision (FP32 circle, BF16 square,
    FP16 diamond), and for INT8 the quantizer (hollow: OpenVINO's uint8 layout). Each row's
    paired 95% interval on Δ top-1 is its vertical error bar. The Pareto front is dashed; its
    points, the baseline and each quantizer's most accurate row are labelled where a label
    fits without overlap, the rest listed in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"torch": "tab:gray", "openvino": "tab:blue", "onnxruntime": "tab:orange",
               "tensorrt": "tab:green", "triton": "tab:red"}
    quantizers = [q for q in dict.fromkeys(r.get("quantizer", "-") for r in rows)
                  if q not in ("-", "ours")]
    markers = {"ours": "^", **dict(zip(quantizers, _ANCHOR_MARKERS))}
    views = [(key, title) for key, title in (("latency_ms", "own input size"),
                                             ("latency_ms_299", "full size at 299"))
             if any(r.get(key) is not None for r in rows)] or [("latency_ms", "own input size")]
    fig, axes = plt.subplots(1, len(views), figsize=(7.5 * len(views) + 2, 6), squeeze=False)
    panels = []
    for ax, (key, title) in zip(axes[0], views):
        pts = [r for r in rows if r[key] is not None and r["top1"] is not None]
        seen = set()
        for r in pts:
            u8 = r.get("target") == "openvino"
            quantizer = r.get("quantizer", "-")
            label = f"{r['engine']} {r['precision']}" + (
                f" {quantizer}" if r["precision"] == "int8" else "") + (" u8" if u8 else "")
            bar = _error_bar(r, rows[0]["top1"] if rows else None)
            if bar is not None:
                ax.errorbar(r[key], r["top1"], yerr=[[bar[0]], [bar[1]]], fmt="none",
                            ecolor=colours.get(r["engine"], "k"), elinewidth=0.8, capsize=2,
                            alpha=0.7)
            marker = (markers.get(quantizer, "o") if r["precision"] == "int8"
                      else _FLOAT_MARKERS.get(r["precision"], "o"))
            ax.scatter(r[key], r["top1"], marker=marker,
                       facecolors="none" if u8 else colours.get(r["engine"], "k"),
                       edgecolors=colours.get(r["engine"], "k"), s=45,
                       label=None if label in seen else label)
            seen.add(label)
        front = _pareto_front(pts, key)
        if front:
            ax.plot([p[key] for p in front], [p["top1"] for p in front], "k--", lw=0.8)
        best = [max((r for r in pts if r.get("quantizer") == q), key=lambda r: r["top1"])
                for q in dict.fromkeys(r.get("quantizer") for r in pts)]
        chosen = list({id(r): r for r in front + pts[:1] + best}.values())
        panels.append((ax, [(r[key], r["top1"], _row_label(r)) for r in chosen]))
        ax.set_xscale("log")
        readable_log_ticks(ax)
        ax.set_xlabel(f"batch-1 latency (ms, {title}; log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"accuracy vs latency: {title}")
        ax.grid(alpha=0.3)
    label_panels(fig, panels)
    return fig
