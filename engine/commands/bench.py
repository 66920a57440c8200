"""``inception-engine bench``: latency percentiles and throughput of a model file on an engine.

Generic over ``engine.load``: any file an engine opens (``.onnx``, ``.plan``) is timed the
same way. A registered model name instead of a file times the PyTorch eager reference. The
calls are timed by :func:`engine.timing.time_calls`, the loop every latency here comes from.

A TensorRT plan gets trtexec's performance summary instead of the table: throughput
(queries/s and images/s over the timed run), host latency (host array in, host array out:
the copies to and from the GPU included) and GPU compute time (a CUDA tensor in and out,
timed with CUDA events on the stream: the engine's work alone).

An OpenVINO file also gets its throughput under each ``--hint`` (default LATENCY and
THROUGHPUT) as a server sees it: as many callers at once as the compiled model has infer
requests (one per stream), :func:`engine.backends.openvino.hint_throughput`; the faster hint
and its stream count are what a deployment should use.
"""
from __future__ import annotations

import json
from typing import Dict

from ..errors import InputError
from ..runtime import count_option
from . import add_command, non_negative_float, non_negative_int, positive_int


def register(sub):
    p = add_command(sub, "bench", "inception-engine bench irv2.onnx --backend openvino --batch 1 8 "
                    "--iters 50 --threads 4", help="latency (p50/p90/p99) and throughput of an "
                    "engine")
    p.add_argument("model", metavar="MODEL", help="a model file (.onnx, .plan) or a registered "
                                                  "variant name (PyTorch eager)")
    p.add_argument("--backend", help="engine (default: what engine.load picks)")
    p.add_argument("--precision", help="fp32 | bf16 | fp16 | int8 (default: the file's)")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8],
                   help="batch sizes (default 1 8)")
    p.add_argument("--threads", type=positive_int, help="CPU threads")
    p.add_argument("--iters", type=positive_int, default=20,
                   help="timed iterations per batch size")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed iterations first")
    p.add_argument("--duration", type=non_negative_float, default=0.0,
                   help="keep timing for at least this many seconds per batch size (like "
                        "trtexec --duration); --iters is then the minimum count")
    p.add_argument("--device-input", action="store_true",
                   help="feed a torch CUDA tensor (GPU engines: excludes host<->device copies)")
    p.add_argument("--hint", nargs="+", choices=("latency", "throughput"),
                   default=["latency", "throughput"],
                   help="OpenVINO: the performance hints whose concurrent throughput is "
                        "measured per batch size (default both; the table above is one "
                        "caller under LATENCY)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def time_runtime(rt, batch: int, iters: int = 20, warmup: int = 3, shape=None,
                 seed: int = 0, duration: float = 0.0,
                 device_input: bool = False) -> Dict[str, float]:
    """Time ``rt`` on a random NCHW batch: p50/p90/p99/mean latency (ms) and throughput
    (images/s at the median latency)."""
    import numpy as np
    from ..timing import summarize, time_calls
    batch = count_option("batch", batch, allow_none=False)
    count_option("iters", iters, allow_none=False)
    count_option("warmup", warmup, minimum=0, allow_none=False)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or \
            not 0 <= duration < float("inf"):
        raise InputError(f"duration must be a finite number of seconds >= 0, got {duration!r}; "
                         "0 times "
                         "exactly iters calls")
    if shape is None:
        cfg = getattr(rt, "config", None)
        spec = rt.inputs[0].shape if getattr(rt, "inputs", None) else (None,) * 4
        if cfg is not None:
            shape = cfg.input_size
        elif all(d is not None for d in spec[1:]):
            shape = tuple(spec[1:])
        else:
            raise InputError("the model's input size is unknown (no config, dynamic spatial "
                             "dims); pass shape=(C, H, W)")
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    if device_input:
        import torch
        from kernels.env import cuda_usable
        if not cuda_usable():
            raise InputError("--device-input needs torch with CUDA and a GPU; drop it to "
                             "time host arrays")
        x = torch.from_numpy(x).cuda()
    return summarize(time_calls(lambda: rt(x), iters=iters, warmup=warmup, duration=duration),
                     batch)


def plan_report(rt, batch: int, iters: int = 20, warmup: int = 3,
                duration: float = 0.0) -> Dict[str, object]:
    """trtexec's summary for a GPU runtime at ``batch``: ``host_latency`` and
    ``gpu_compute`` (:func:`engine.timing.summarize` dicts; ``gpu_compute`` is ``None`` with
    ``gpu_compute_reason`` when torch has no CUDA here) and the throughput of the host loop."""
    from kernels.env import cuda_usable
    host = time_runtime(rt, batch, iters, warmup, duration=duration)
    wall_s = host["mean_ms"] * host["n"] / 1e3
    report = {"batch": batch, "host_latency": host, "gpu_compute": None, "walltime_s": wall_s,
              "throughput_qps": host["n"] / wall_s, "throughput_ips": host["n"] * batch / wall_s}
    if not cuda_usable():
        report["gpu_compute_reason"] = "torch has no CUDA here, so no CUDA events to time with"
        return report
    import numpy as np
    import torch
    from ..timing import summarize, time_calls
    shape = (batch, *(rt.config.input_size if rt.config is not None else rt.inputs[0].shape[1:]))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape, np.float32)).cuda()
    report["gpu_compute"] = summarize(time_calls(lambda: rt(x), iters=iters, warmup=warmup,
                                                 duration=duration, cuda=True), batch)
    return report


def _trtexec_line(label: str, stats: Dict[str, float]) -> str:
    return (f"  {label}: min = {stats['min_ms']:.5f} ms, max = {stats['max_ms']:.5f} ms, "
            f"mean = {stats['mean_ms']:.5f} ms, median = {stats['p50_ms']:.5f} ms, "
            f"percentile(90%) = {stats['p90_ms']:.5f} ms, percentile(95%) = "
            f"{stats['p95_ms']:.5f} ms, percentile(99%) = {stats['p99_ms']:.5f} ms")


def print_plan_report(report: Dict[str, object]) -> None:
    """``report`` (from :func:`plan_report`) in trtexec's words and layout."""
    print(f"=== Performance summary (batch {report['batch']}) ===")
    print(f"  Throughput: {report['throughput_qps']:.4f} qps ({report['throughput_ips']:.1f} "
          "images/s)")
    print(_trtexec_line("Latency", report["host_latency"]))
    if report["gpu_compute"] is not None:
        print(_trtexec_line("GPU Compute Time", report["gpu_compute"]))
    else:
        print(f"  GPU Compute Time: not measured ({report['gpu_compute_reason']})")
    print(f"  Total Host Walltime: {report['walltime_s']:.5f} s, "
          f"{report['host_latency']['n']} queries")


def _open(args):
    from pathlib import Path
    if not Path(args.model).exists():
        from ..models.registry import list_models
        if args.model in list_models():
            if args.backend not in (None, "torch"):
                raise InputError(f"{args.model} is a model name: it runs on the torch backend; "
                                 f"export it first to run on {args.backend}")
            from ..backends.torch import TorchRuntime
            from ..models.registry import create_model
            return TorchRuntime(create_model(args.model, seed=0), precision=args.precision,
                                threads=args.threads)
    from ..loader import load
    return load(args.model, backend=args.backend, precision=args.precision, threads=args.threads)


def _run_plan(rt, args) -> int:
    with rt:
        reports = [plan_report(rt, b, args.iters, args.warmup, args.duration)
                   for b in args.batch]
    if args.json:
        print(json.dumps({"model": args.model, "engine": f"{rt.backend}/{rt.precision}",
                          "results": reports}, indent=2))
        return 0
    print(f"{args.model} on {rt.backend}/{rt.precision}, {args.iters} iters after "
          f"{args.warmup} warmup (Latency is host latency: copies to and from the GPU "
          "included)")
    for report in reports:
        print_plan_report(report)
    return 0


def run(args):
    import os
    rt = _open(args)
    if rt.backend == "tensorrt" and not args.device_input:
        return _run_plan(rt, args)
    rows = []
    with rt:
        for b in args.batch:
            r = time_runtime(rt, b, args.iters, args.warmup, duration=args.duration,
                             device_input=args.device_input)
            r.update(engine=f"{rt.backend}/{rt.precision}")
            rows.append(r)
    hints = _hint_rows(rt, args) if rt.backend == "openvino" else {}
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.json:
        print(json.dumps({"model": args.model, "threads": args.threads, "loadavg_1m": load_avg,
                          "results": rows, "hints": hints}, indent=2))
        return 0
    name = rt.config.name if rt.config is not None else "config unknown"
    print(f"{args.model} ({name}) on {rt.backend}/{rt.precision}, threads "
          f"{args.threads or 'default'}, {args.iters} iters after {args.warmup} warmup"
          + (f", load average {load_avg:.1f}" if load_avg is not None else ""))
    print(f"  {'batch':>5} {'min ms':>8} {'mean ms':>8} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'img/s':>9} {'n':>5}")
    for r in rows:
        print(f"  {r['batch']:>5} {r['min_ms']:8.2f} {r['mean_ms']:8.2f} {r['p50_ms']:8.2f} "
              f"{r['p90_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f} "
              f"{r['throughput_ips']:9.1f} {r['n']:>5}")
    if hints:
        from ..backends.openvino import choose_hint
        print("  concurrent callers (one per infer request), images/s:")
        for b, measured in hints.items():
            best, streams = choose_hint(measured)
            cells = ", ".join(f"{h.upper()} {m['images_per_s']:.1f} ({m['streams']} streams, "
                              f"{m['requests']} requests)" for h, m in measured.items())
            print(f"  {b:>5} {cells}; faster: {best.upper()} with {streams} streams")
    return 0


def _hint_rows(rt, args) -> Dict[int, dict]:
    """``{batch: hint_throughput(...)}`` for an OpenVINO runtime, opened as ``rt`` was."""
    from ..backends.openvino import hint_throughput
    return {b: hint_throughput(rt.path, b, hints=args.hint, threads=args.threads,
                               precision=rt.precision) for b in args.batch}
