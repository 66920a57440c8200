"""The INT8 accuracy-versus-speed study: ``inception-engine study``.

For one model and one labelled test set, and for each engine and precision available on the
machine (OpenVINO FP32/BF16/INT8, ONNX Runtime FP32/INT8, TensorRT and the Triton engine
where present) and each calibration method, it measures:

- top-1 accuracy on the held-out test set and agreement (%) with the PyTorch FP32 reference;
- calibration time;
- batch-1 latency (median) at the model's own input size, and at the canonical
  Inception-ResNet-v2 299x299 shape (random weights: speed does not depend on the values).

The PyTorch eager FP32 reference is the baseline row, measured in the same run. Output
(``--out DIR``): ``results.json`` (a list of rows), ``results.csv``, ``report.md`` and
``pareto.png`` (accuracy vs latency).

Defaults study the shipped subject: Inception-ResNet-v2 at width 0.25 trained on Fashion-MNIST
(75x75), its bundled checkpoint, the shipped 10k test set and the 2k calibration split drawn
from the train set. ``--model/--weights/--data/--calib`` study a user's model and data.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics as st
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")
SUBJECT = "inception_resnet_v2_fmnist"


@dataclass
class Row:
    engine: str
    precision: str
    method: str                       # calibration method, "-" for float rows; "+u8": uint8
                                      # ReLU outputs (CPU engines); "+autoK": K layers float
    top1: Optional[float] = None      # %
    agreement: Optional[float] = None  # % of test images with the FP32 reference's top-1
    latency_ms: Optional[float] = None  # batch 1, model's own input size (median)
    latency_ms_299: Optional[float] = None  # batch 1, IR-v2 at 299 (median)
    throughput: Optional[float] = None  # img/s at the eval batch size, model's own size
    calib_seconds: Optional[float] = None
    excluded: List[str] = field(default_factory=list)
    note: str = ""


# ----------------------------------------------------------------------------- data
def load_eval_data(data, config, limit=None):
    """(x float32 NCHW, labels int64). Default: the shipped Fashion-MNIST test set.

    data: None, an ``.npz`` with ``images`` (uint8 N x H x W grayscale, or float32 NCHW already
    preprocessed) and ``labels``, or a folder with one sub-folder of images per class (sorted
    sub-folder names are the class indices).
    """
    import torch
    from .datasets import fashion_mnist, to_model_input
    from .errors import InputError
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
        with np.load(path) as z:
            if "images" not in z or "labels" not in z:
                raise InputError(f"{path}: expected arrays 'images' and 'labels', found {list(z)}")
            images, y = z["images"], z["labels"].astype(np.int64)
        if images.dtype == np.uint8 and images.ndim == 3:
            x = to_model_input(images, config).numpy()
        elif images.dtype == np.float32 and images.ndim == 4:
            x = images
        else:
            raise InputError(f"{path}: 'images' must be uint8 (N, H, W) or float32 NCHW, got "
                             f"{images.dtype} {images.shape}")
    else:
        raise InputError(f"--data {path}: expected a .npz file or a folder of class folders")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) != len(y) or not len(x):
        raise InputError(f"{data}: {len(x)} images and {len(y)} labels")
    return np.ascontiguousarray(x, np.float32), y


def default_calib(config, limit):
    from .datasets import fashion_mnist, to_model_input
    images, _ = fashion_mnist("calib", limit=limit)
    return to_model_input(images, config).numpy()


# ----------------------------------------------------------------------------- measuring
def predict(fn: Callable, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits for all of x, in batches."""
    outs = [np.asarray(fn(x[i:i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(outs, 0)


def latency_ms(fn: Callable, x: np.ndarray, iters: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1e3)
    return float(st.median(times))


def _torch_fn(model):
    import torch

    def fn(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return fn


def machine_info() -> dict:
    import torch
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


# ----------------------------------------------------------------------------- the study
def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def engines_available(requested: Optional[Sequence[str]] = None) -> List[tuple]:
    """(backend, precision) pairs to study: float precisions; INT8 is added per method."""
    from . import backends as B
    pairs = []
    wanted = list(requested) if requested else ["openvino", "onnxruntime", "tensorrt", "triton"]
    gpu = _has_cuda()
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


def run_study(model: str = SUBJECT, weights="bundled", data=None, calib=None,
              methods: Sequence[str] = METHODS, engines: Optional[Sequence[str]] = None,
              out="study", num_test: Optional[int] = None, num_calib: int = 1000,
              threads: int = 2, iters: int = 20, big: bool = True, auto_exclude: int = 0,
              cpu_uint8: bool = True, eval_batch: int = 64, log: Callable[[str], None] = print) -> List[dict]:
    import torch
    import calibration
    from .export import export_onnx
    from .loader import load
    from .models.registry import create_model, get_config
    from .fileio import atomic_write_text

    torch.set_num_threads(threads)
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    if weights == "bundled" and model != SUBJECT:
        weights = None
    ref = create_model(model, weights=weights)
    cfg = ref.config
    random_weights = weights is None
    if random_weights:
        log("WARNING: no --weights given: the model's weights are random, so accuracies are "
            "meaningless (latency figures still hold)")
    if data is None and cfg.labels != "fashion_mnist":
        raise ValueError(f"{model} was not trained on the shipped Fashion-MNIST data; pass "
                         "--data with your labelled test set (and --calib)")
    x_test, y_test = load_eval_data(data, cfg, num_test)
    calib_data = calib if calib is not None else default_calib(cfg, num_calib)
    log(f"study: {cfg.name}, {len(x_test)} test images, calibration from "
        f"{'the shipped train split' if calib is None else calib}, {threads} threads")

    fp32_path = export_onnx(ref, out / "models" / f"{cfg.name}.onnx")
    rows: List[Row] = []

    # baseline: PyTorch eager FP32
    tfn = _torch_fn(ref)
    ref_logits = predict(tfn, x_test, eval_batch)
    ref_pred = ref_logits.argmax(1)
    x1 = x_test[:1]

    def score(logits):
        pred = logits.argmax(1)
        return 100.0 * float((pred == y_test).mean()), 100.0 * float((pred == ref_pred).mean())

    base = Row("torch", "fp32", "-", *score(ref_logits), latency_ms(tfn, x1, iters),
               note="PyTorch eager: the baseline")
    t = time.perf_counter()
    predict(tfn, x_test[:eval_batch * 2], eval_batch)
    base.throughput = min(len(x_test), eval_batch * 2) / (time.perf_counter() - t)
    rows.append(base)
    log(f"  torch fp32: top1 {base.top1:.2f}%  {base.latency_ms:.2f} ms")

    # INT8 files, one per method, sharing one statistics pass
    t = time.perf_counter()
    stats = calibration.collect_statistics(fp32_path, calib_data, num_images=num_calib,
                                           threads=threads, progress=False)
    stats_seconds = time.perf_counter() - t
    int8: Dict[str, tuple] = {}
    for m in methods:
        res = calibration.quantize(fp32_path, out / "models" / f"{cfg.name}.int8.{m}.onnx",
                                   statistics=stats, method=m)
        int8[m] = (res.path, stats_seconds + res.calibration_seconds, [])
        log(f"  calibrated {m} in {int8[m][1]:.1f} s")
        if cpu_uint8:
            # CPU-only variant: uint8 (zero point 0) on ReLU outputs, so CPUs without AMX run
            # every concat in int8; TensorRT takes only int8 Q/DQ, so GPU engines skip it
            res = calibration.quantize(fp32_path, out / "models" / f"{cfg.name}.u8.{m}.onnx",
                                       statistics=stats, method=m, unsigned_relu=True)
            int8[f"{m}+u8"] = (res.path, stats_seconds + res.calibration_seconds, [])
    if auto_exclude:
        # mse is the most robust range here (entropy clips a spike-shaped histogram hard:
        # see benchmarks/RESULTS.md); auto-exclusion then removes what is left
        best_guess = "mse" if "mse" in methods else methods[0]
        res = calibration.quantize(fp32_path, out / "models" / f"{cfg.name}.int8.{best_guess}"
                                   f".auto{auto_exclude}.onnx", data=calib_data,
                                   statistics=stats, method=best_guess, auto_exclude=auto_exclude,
                                   num_images=num_calib, threads=threads)
        int8[f"{best_guess}+auto{auto_exclude}"] = (res.path, stats_seconds + res.seconds,
                                                      list(res.auto_excluded))
        if cpu_uint8:
            res = calibration.quantize(fp32_path, out / "models" / f"{cfg.name}.u8.{best_guess}"
                                       f".auto{auto_exclude}.onnx", data=calib_data,
                                       statistics=stats, method=best_guess,
                                       auto_exclude=auto_exclude, num_images=num_calib,
                                       threads=threads, unsigned_relu=True)
            int8[f"{best_guess}+u8+auto{auto_exclude}"] = (
                res.path, stats_seconds + res.seconds, list(res.auto_excluded))

    # the canonical 299 shape: IR-v2 at full size, random weights
    big_files = {}
    if big:
        big_model = create_model("inception_resnet_v2")
        big_fp32 = export_onnx(big_model, out / "models" / "inception_resnet_v2_299.onnx")
        rng = np.random.default_rng(0)
        # speed does not depend on the scale values: calibrate on a few shipped images
        big_calib = torch.nn.functional.interpolate(
            torch.from_numpy(default_calib(get_config(SUBJECT), 8)), size=(299, 299),
            mode="bilinear", align_corners=False).numpy()
        big_stats = calibration.collect_statistics(big_fp32, big_calib, threads=threads)
        big_files["fp32"] = big_fp32
        for m in int8:
            base_m = m.split("+")[0]
            big_files[m] = calibration.quantize(
                big_fp32, out / "models" / f"inception_resnet_v2_299.int8.{m}.onnx",
                statistics=big_stats, method=base_m, unsigned_relu="+u8" in m).path
        xb = rng.standard_normal((1, 3, 299, 299)).astype(np.float32)
        base.latency_ms_299 = latency_ms(_torch_fn(big_model), xb, max(5, iters // 2))
        log(f"  torch fp32 @299: {base.latency_ms_299:.1f} ms")

    def measure(backend, precision, method, path, big_path, calib_s=None, excluded=()):
        row = Row(backend, precision, method, calib_seconds=calib_s, excluded=list(excluded))
        try:
            with load(path, backend=backend, precision=precision, threads=threads) as rt:
                logits = predict(rt, x_test, eval_batch)
                row.top1, row.agreement = score(logits)
                row.latency_ms = latency_ms(rt, x1, iters)
                t0 = time.perf_counter()
                rt(x_test[:eval_batch])
                row.throughput = eval_batch / (time.perf_counter() - t0)
            if big_path is not None:
                with load(big_path, backend=backend, precision=precision, threads=threads) as rt:
                    row.latency_ms_299 = latency_ms(rt, xb, max(5, iters // 2))
        except Exception as e:  # one engine failing must not sink the study: record why
            row.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        log(f"  {backend} {precision} {method}: top1 "
            f"{row.top1 if row.top1 is None else round(row.top1, 2)}  "
            f"{row.latency_ms if row.latency_ms is None else round(row.latency_ms, 2)} ms  "
            f"@299 {row.latency_ms_299 if row.latency_ms_299 is None else round(row.latency_ms_299, 1)} ms "
            f"{row.note}")
        return row

    for backend, precision in engines_available(engines):
        rows.append(measure(backend, precision, "-", fp32_path, big_files.get("fp32")))
        if backend in ("openvino", "onnxruntime", "tensorrt", "triton") and precision != "bf16":
            for m, (path, secs, excl) in int8.items():
                if "+u8" in m and backend not in ("openvino", "onnxruntime"):
                    continue
                rows.append(measure(backend, "int8", m, path, big_files.get(m), secs, excl))

    result = [asdict(r) for r in rows]
    for r in result:
        r["model"] = cfg.name
        r["random_weights"] = random_weights
        if base.latency_ms and r["latency_ms"]:
            r["latency_vs_torch"] = r["latency_ms"] / base.latency_ms
        if base.latency_ms_299 and r["latency_ms_299"]:
            r["latency_299_vs_torch"] = r["latency_ms_299"] / base.latency_ms_299
        if base.top1 is not None and r["top1"] is not None:
            r["top1_delta_vs_fp32"] = r["top1"] - base.top1
    meta = {"machine": machine_info(), "model": cfg.name, "weights": str(weights),
            "test_images": int(len(x_test)), "threads": threads, "iters": iters,
            "calibration_images": num_calib, "statistics_seconds": stats_seconds}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    write_csv(out / "results.csv", result)
    atomic_write_text(out / "report.md", report_markdown(result, meta))
    try:
        pareto_plot(result, out / "pareto.png")
    except ImportError:
        log("  (matplotlib not installed: no pareto.png; pip install matplotlib)")
    log(f"wrote {out}/results.json, results.csv, report.md, pareto.png")
    return result


COLUMNS = ["engine", "precision", "method", "top1", "top1_delta_vs_fp32", "agreement",
           "latency_ms", "latency_vs_torch", "latency_ms_299", "latency_299_vs_torch",
           "throughput", "calib_seconds", "excluded", "note"]


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
             "| engine | precision | method | top-1 % | Δ vs FP32 (pt) | agreement % | latency ms "
             "| × torch | latency @299 ms | × torch @299 | calib s | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["engine"], r["precision"], r["method"], _fmt(r["top1"]),
            _fmt(r.get("top1_delta_vs_fp32")), _fmt(r["agreement"]), _fmt(r["latency_ms"]),
            _fmt(r.get("latency_vs_torch"), 3), _fmt(r["latency_ms_299"], 1),
            _fmt(r.get("latency_299_vs_torch"), 3), _fmt(r["calib_seconds"], 1),
            (r["note"] + (" excluded: " + ", ".join(r["excluded"]) if r["excluded"] else ""))
            .strip()]) + " |")
    int8 = [r for r in rows if r["precision"] == "int8" and r["top1"] is not None]
    if int8:
        best = max(int8, key=lambda r: (r["top1"], -(r["latency_ms"] or 1e9)))
        lines += ["", f"Best INT8: {best['engine']} / {best['method']}: top-1 {best['top1']:.2f}% "
                  f"({_fmt(best.get('top1_delta_vs_fp32'))} pt vs PyTorch FP32)."]
    if rows and rows[0].get("random_weights"):
        lines += ["", "**Weights are random: accuracy columns are meaningless.**"]
    return "\n".join(lines) + "\n"


def pareto_plot(rows, path):
    """Accuracy vs batch-1 latency, at the model's own size and at 299; the Pareto front is
    dashed and only its points are labelled (the rest are told apart by colour and marker)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .fileio import atomic_path
    colours = {"torch": "tab:gray", "openvino": "tab:blue", "onnxruntime": "tab:orange",
               "tensorrt": "tab:green", "triton": "tab:red"}
    markers = {"fp32": "o", "bf16": "s", "fp16": "s", "int8": "^"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, key, title in ((axes[0], "latency_ms", "own input size"),
                           (axes[1], "latency_ms_299", "IR-v2 at 299")):
        pts = [r for r in rows if r[key] is not None and r["top1"] is not None]
        seen = set()
        for r in pts:
            u8 = "+u8" in r["method"]
            label = f"{r['engine']} {r['precision']}" + (" u8" if u8 else "")
            ax.scatter(r[key], r["top1"], marker=markers.get(r["precision"], "x"),
                       facecolors="none" if u8 else colours.get(r["engine"], "k"),
                       edgecolors=colours.get(r["engine"], "k"), s=45,
                       label=None if label in seen else label)
            seen.add(label)
        # Pareto front: no other point is both at least as fast and at least as accurate
        front = sorted((p for p in pts if not any(
            q is not p and q[key] <= p[key] and q["top1"] >= p["top1"] and
            (q[key] < p[key] or q["top1"] > p["top1"]) for q in pts)), key=lambda p: p[key])
        if front:
            ax.plot([p[key] for p in front], [p["top1"] for p in front], "k--", lw=0.8)
            for p in front:
                name = f"{p['engine']}/{p['precision']}" + (
                    f"/{p['method']}" if p["method"] != "-" else "")
                ax.annotate(name, (p[key], p["top1"]), fontsize=7, xytext=(4, -10),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"batch-1 latency (ms, {title}; log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"accuracy vs latency: {title}")
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
