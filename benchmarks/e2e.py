"""End-to-end latency and throughput: every engine and precision on this machine, side by side
with the PyTorch eager FP32 reference (and timm eager where installed), in one run.

    python benchmarks/e2e.py --model inception_resnet_v2 --size 299 --batch 1 8 --threads 2
    python benchmarks/e2e.py --device cuda          # on a GPU machine

What runs (each only where available; unavailable ones are listed with the reason):
- CPU: torch eager FP32 (the baseline), timm eager FP32, OpenVINO FP32 / BF16 / INT8,
  ONNX Runtime FP32 / INT8. INT8 runs a symmetric Q/DQ ONNX: ``--int8-onnx FILE``, or one made
  here by ``calibration.quantize`` (min-max on random images: speed does not depend on the
  calibration quality, accuracy does; see the INT8 study for that).
- CUDA (``--device cuda``): torch eager FP16 channels_last with ``cudnn.benchmark`` (the
  baseline) and FP32, torch.compile of the FP16 model (``--compile-mode``, max-autotune by
  default), TensorRT FP16/INT8 plans built here, the ``triton`` backend FP16 and INT8, ONNX
  Runtime's CUDA provider.

Method: one exported ONNX file for every engine; each runner is warmed up, then timed in
``--rounds`` interleaved rounds of ``--iters`` calls (so load from other processes hits every
runner alike); percentiles are over all timed calls, throughput = batch / p50. The load
average before and after is recorded: on a shared machine read ratios, not absolute times.
Random weights (seeded) unless ``--weights``: speed does not depend on them.

Writes ``e2e.csv``, ``e2e.json`` and ``e2e.png`` (p50 latency bars per batch, ratio to the
baseline on each bar) to the folder ``--out``, or, for ``--out x.csv``, ``x.csv`` with
``x.json`` and ``x.png`` beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.export import weights_fingerprint  # noqa: E402
from engine.fileio import atomic_path, atomic_write_text  # noqa: E402
from engine.timing import cpu_model, percentiles, summarize, time_calls  # noqa: E402
from kernels.env import cuda_usable  # noqa: E402

TIMM_NAMES = {"inception_v4": "inception_v4", "inception_resnet_v2": "inception_resnet_v2"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="inception_resnet_v2")
    p.add_argument("--size", type=int, default=None, help="input H=W (default: the config's)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--weights", default=None)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iters", type=int, default=10, help="timed calls per runner per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--engines", nargs="+", default=None,
                   help="subset of runner labels to run (e.g. openvino/fp32 torch/fp32)")
    p.add_argument("--onnx", type=Path, default=None, help="reuse this FP32 export")
    p.add_argument("--int8-onnx", type=Path, default=None, help="a Q/DQ ONNX for INT8 runs")
    p.add_argument("--no-int8", action="store_true", help="skip INT8 (no calibration here)")
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check per engine")
    p.add_argument("--work", type=Path, default=None,
                   help="keep the exported (and INT8) ONNX here and reuse them on the next run "
                        "(default: a fresh temporary folder)")
    p.add_argument("--compile-mode", default="max-autotune",
                   choices=["max-autotune", "reduce-overhead", "default"],
                   help="torch.compile mode of the compiled GPU baseline")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2e",
                   help="a folder, or a file name ending in .csv (JSON and PNG beside it)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- machine
def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}
    try:
        txt = Path("/proc/cpuinfo").read_text()
        flags = set(next(l for l in txt.splitlines() if l.startswith("flags")).split())
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))
    except (OSError, StopIteration):
        pass
    import torch
    info["torch"] = torch.__version__
    for mod in ("openvino", "onnxruntime", "timm", "tensorrt"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed or broken: recorded as absent
            info[mod] = None
    if info.get("openvino"):
        from engine.backends.openvino import capabilities
        info["openvino_cpu_capabilities"] = capabilities()
    if device == "cuda" and cuda_usable():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------- runners
class Runner:
    def __init__(self, label, engine_name, precision, make, baseline=False, note=""):
        self.label, self.engine, self.precision = label, engine_name, precision
        self.make, self.baseline, self.note = make, baseline, note
        self.rt = None
        self.error = None


def _torch_runtime(module, precision, threads, device, channels_last=False):
    from engine.backends.torch import TorchRuntime
    return TorchRuntime(module, precision=precision, threads=threads, device=device,
                        channels_last=channels_last)


def _compiled_runtime(model, mode: str):
    """The FP16 channels_last eager model under torch.compile (``mode``), as a runtime."""
    import torch
    rt = _torch_runtime(model, "fp16", None, "cuda", channels_last=True)
    kw = {} if mode == "default" else {"mode": mode}
    rt.module = torch.compile(rt.module, **kw)
    return rt


def make_int8(fp32_onnx: Path, out: Path, size, threads) -> Path:
    import calibration
    x = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    calibration.quantize(str(fp32_onnx), str(out), data=x, method="minmax", batch_size=4,
                         threads=threads)
    return out


def build_runners(args, model, onnx_path: Path, int8_path, work: Path):
    from engine import backends
    R = []
    th = args.threads
    if args.device == "cpu":
        R.append(Runner("torch/fp32", "torch eager", "fp32",
                        lambda: _torch_runtime(model, "fp32", th, "cpu"), baseline=True))
        # the same eager model in NHWC: oneDNN then skips most per-call weight/activation
        # reorders (informative; the baseline stays the default NCHW eager model)
        R.append(Runner("torch/fp32-cl", "torch eager", "fp32",
                        lambda: _torch_runtime(model, "fp32", th, "cpu", channels_last=True),
                        note="channels_last"))
        if not args.no_timm and model.config.arch in TIMM_NAMES and model.config.width == 1.0:
            def timm_rt():
                import timm
                m = timm.create_model(TIMM_NAMES[model.config.arch], pretrained=False,
                                      num_classes=model.config.num_classes).eval()
                return _torch_runtime(m, "fp32", th, "cpu")
            R.append(Runner("timm/fp32", "timm eager", "fp32", timm_rt))
        for prec in ("fp32", "bf16"):
            R.append(Runner(f"openvino/{prec}", "openvino", prec,
                            lambda p=prec: engine.load(onnx_path, backend="openvino",
                                                       precision=p, threads=th)))
        R.append(Runner("onnxruntime/fp32", "onnxruntime", "fp32",
                        lambda: engine.load(onnx_path, backend="onnxruntime", threads=th)))
        if int8_path is not None:
            for be in ("openvino", "onnxruntime"):
                R.append(Runner(f"{be}/int8", be, "int8",
                                lambda b=be: engine.load(int8_path(), backend=b, threads=th)))
    else:
        import torch
        torch.backends.cudnn.benchmark = True      # the eager baseline picks its best algorithms
        R.append(Runner("torch/fp16-cl", "torch eager", "fp16",
                        lambda: _torch_runtime(model, "fp16", None, "cuda", channels_last=True),
                        baseline=True, note="channels_last"))
        R.append(Runner("torch-compile/fp16", "torch.compile", "fp16",
                        lambda: _compiled_runtime(model, args.compile_mode),
                        note=f"mode={args.compile_mode}"))
        R.append(Runner("torch/fp32", "torch eager", "fp32",
                        lambda: _torch_runtime(model, "fp32", None, "cuda")))
        if backends.check_available("tensorrt")[0]:
            for prec in ("fp16", "int8"):
                def trt(p=prec):
                    src = onnx_path if p != "int8" else int8_path()
                    plan = work / f"model.{p}.plan"
                    engine.build(str(src), str(plan), precision=p if p != "int8" else None,
                                 max_batch=max(args.batch))
                    return engine.load(plan, backend="tensorrt")
                if prec == "int8" and int8_path is None:
                    continue
                R.append(Runner(f"tensorrt/{prec}", "tensorrt", prec, trt))
        if backends.is_installed("triton"):
            R.append(Runner("triton/fp16", "triton", "fp16",
                            lambda: engine.load(onnx_path, backend="triton", precision="fp16")))
            if int8_path is not None:
                R.append(Runner("triton/int8", "triton", "int8",
                                lambda: engine.load(int8_path(), backend="triton")))
        R.append(Runner("onnxruntime-cuda/fp32", "onnxruntime", "fp32",
                        lambda: engine.load(onnx_path, backend="onnxruntime", device="cuda")))
    if args.engines:
        R = [r for r in R if r.label in args.engines or r.baseline]
    return R


# --------------------------------------------------------------------------- main
def run(args) -> dict:
    import torch
    from engine.models.registry import create_model
    size = args.size or engine.get_config(args.model).input_size[1]
    model = create_model(args.model, weights=args.weights, width=args.width, seed=0)
    work = args.work or Path(tempfile.mkdtemp(prefix="e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, int8_path = model_files(args, model, size, work)
    runners = build_runners(args, model, onnx_path, int8_path, work)

    info = machine_info(args.device)
    info["loadavg_before"] = list(os.getloadavg())
    live = open_runners(runners)
    parity = {} if args.no_verify else check_parity(live, model, size)

    rows = []
    result = {"model": args.model, "size": size, "width": args.width,
              "weights": args.weights or "random (seeded)", "threads": args.threads,
              "device": args.device, "iters": args.iters, "rounds": args.rounds,
              "warmup": args.warmup, "machine": info, "results": rows,
              "unavailable": {r.label: r.error for r in runners if r.error},
              "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    for b in args.batch:
        x = np.random.default_rng(b).standard_normal((b, 3, size, size)).astype(np.float32)
        if args.device == "cuda":
            x = torch.from_numpy(x).cuda()
        samples, cpu = time_batch(live, x, args.warmup, args.iters, args.rounds)
        rows.extend(batch_rows(b, live, samples, cpu, parity))
        info["loadavg_after"] = list(os.getloadavg())
        write_outputs(result, args.out)   # after every batch size: a cut-short run keeps them
    for r in live:
        r.rt.close()
    return result


def model_files(args, model, size: int, work: Path):
    """``(FP32 ONNX path, INT8 path maker or None)``: the export (reused from ``--work`` when
    its weights match), and a function that makes the Q/DQ file on first use."""
    stem = f"{args.model}-w{args.width:g}-{size}"
    onnx_path = args.onnx
    if onnx_path is None:
        onnx_path = work / f"{stem}.onnx"
        if not (args.work and onnx_path.exists()
                and engine.read_metadata(onnx_path)["weights_sha256"]
                == weights_fingerprint(model)):
            engine.export_onnx(model, onnx_path, input_size=(3, size, size))
    if args.no_int8:
        return onnx_path, None
    cached_int8 = work / f"{stem}.int8.onnx"
    int8_file = {"path": args.int8_onnx or (cached_int8 if args.work and cached_int8.exists()
                                            else None)}

    def int8_path():
        if int8_file["path"] is None:
            int8_file["path"] = make_int8(onnx_path, cached_int8, size, args.threads)
        return int8_file["path"]
    return onnx_path, int8_path


def open_runners(runners):
    """Open every runner; one this machine cannot run is listed with the reason."""
    for r in runners:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r.rt = r.make()
        except Exception as e:  # an engine this machine lacks: listed, not fatal
            r.error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            print(f"  skip {r.label}: {r.error}", file=sys.stderr)
    return [r for r in runners if r.rt is not None]


def check_parity(live, model, size: int) -> dict:
    """Parity of each engine against the eager model on two random images (reduced
    precisions on cosine only: random weights give near-tied logits)."""
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    parity = {}
    for r in live:
        if r.baseline or r.engine.startswith(("torch", "timm")):
            continue
        rep = engine.verify(r.rt, model, x, localize=False,
                            tolerance={"top1": None, "top5": None}
                            if r.precision != "fp32" else None)
        parity[r.label] = {"passed": rep.passed, "range_rel_err": rep.range_rel_err,
                           "cosine_min": rep.cosine_min, "top1_agreement": rep.top1_agreement}
    return parity


def time_batch(live, x, warmup: int, iters: int, rounds: int):
    """``(samples ms, CPU seconds)`` per runner label: every runner warmed up, then timed in
    ``rounds`` interleaved rounds of ``iters`` calls."""
    samples = {r.label: [] for r in live}
    cpu = {r.label: 0.0 for r in live}
    for r in live:
        time_calls(lambda: r.rt(x), iters=1, warmup=warmup)   # warm-up only
    for _ in range(rounds):
        for r in live:
            c0 = time.process_time()
            samples[r.label] += time_calls(lambda: r.rt(x), iters=iters, warmup=0)
            cpu[r.label] += time.process_time() - c0
    return samples, cpu


def batch_rows(batch: int, live, samples: dict, cpu: dict, parity: dict) -> list:
    """The result rows of one batch size (printed as they are made)."""
    base = next((r for r in live if r.baseline), None)
    base_p50 = percentiles(samples[base.label])["p50_ms"] if base else None
    rows = []
    for r in live:
        s = summarize(samples[r.label], batch)
        times = {k: round(v, 3) for k, v in s.items() if k.endswith("_ms")}
        rows.append({"batch": batch, "label": r.label, "engine": r.engine,
                     "precision": r.precision, "baseline": r.baseline, **times, "n": s["n"],
                     "throughput_ips": round(s["throughput_ips"], 2),
                     # CPU seconds of this process per call (all threads, spinning
                     # included): less sensitive than wall time to other processes
                     "cpu_ms_per_call": round(cpu[r.label] * 1e3 / s["n"], 2),
                     "latency_ratio": round(s["p50_ms"] / base_p50, 3) if base_p50 else None,
                     "speedup": round(base_p50 / s["p50_ms"], 2) if base_p50 else None,
                     "parity": parity.get(r.label)})
        print(f"  batch {batch:>2} {r.label:22} p50 {s['p50_ms']:8.2f} ms  p90 {s['p90_ms']:8.2f}"
              f"  p99 {s['p99_ms']:8.2f}  {s['throughput_ips']:7.1f} img/s"
              + (f"  x{s['p50_ms'] / base_p50:.3f} of baseline" if base_p50 else ""),
              flush=True)
    return rows


def output_paths(out: Path):
    """``(csv, json, png)``: ``--out x.csv`` names the CSV (the JSON and PNG go beside it,
    same stem); any other ``--out`` is a folder that gets e2e.csv, e2e.json and e2e.png."""
    out = Path(out)
    if out.suffix.lower() == ".csv":
        return out, out.with_suffix(".json"), out.with_suffix(".png")
    return out / "e2e.csv", out / "e2e.json", out / "e2e.png"


def write_outputs(result: dict, out: Path):
    csv_path, json_path, png_path = output_paths(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(result, indent=2))
    cols = ["batch", "label", "engine", "precision", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
            "min_ms", "n", "throughput_ips", "cpu_ms_per_call", "latency_ratio", "speedup"]
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else str(r[c]) for c in cols)
                                for r in result["results"]]
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    try:
        plot(result, png_path)
    except ImportError as e:
        print(f"  no plot ({e}); pip install matplotlib", file=sys.stderr)


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["results"]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        rs = [r for r in rows if r["batch"] == b]
        labels = [r["label"] for r in rs]
        p50 = [r["p50_ms"] for r in rs]
        err = [[0] * len(rs), [r["p90_ms"] - r["p50_ms"] for r in rs]]
        colors = ["#888888" if r["baseline"] else "#1f77b4" for r in rs]
        bars = ax.bar(range(len(rs)), p50, yerr=err, color=colors, capsize=3)
        for bar, r in zip(bars, rs):
            if r["latency_ratio"] is not None:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                        f"{r['latency_ratio']:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rs)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("p50 latency (ms, log), bar to p90")
        ax.set_title(f"batch {b}")
    m = result["machine"]
    fig.suptitle(f"{result['model']} {result['size']}x{result['size']}, {result['threads']} "
                 f"threads, {m.get('gpu') or m.get('cpu', '')}\nratio = latency / baseline "
                 f"(grey), load avg {m['loadavg_before'][0]:.1f}->{m['loadavg_after'][0]:.1f}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run(parse_args())
