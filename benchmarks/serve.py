"""The cost of serving: the bundled Triton Inference Server against the in-process runtime.

Subject: the IR-v2 subject (``inception_resnet_v2_fmnist``, bundled weights, 75x75), exported
once and written as a python-backend repository (this package's runtime inside the server,
OpenVINO on a CPU; max batch 16, preferred 4 and 8, 2 ms queue delay, one instance). For each
concurrency level (1, 4, 8 callers) the same number of batch-1 requests is sent first to the
in-process runtime (``engine.load`` on the same file, one runtime shared by the caller
threads), then to the server over HTTP (one tritonclient connection per caller). Reported
per side: requests/s (requests over the level's wall time) and p50/p99 latency of one
request; and per level the server-to-runtime ratios. Both sides run in this one run, on the
same machine, one after the other, so the ratio is the figure to read.

    python benchmarks/serve.py --requests 200 --out benchmarks/results/serve.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import datasets, tritonserver  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine.timing import cpu_model, percentiles  # noqa: E402

SUBJECT = "inception_resnet_v2_fmnist"
NAME = "subject"
LEVELS = (1, 4, 8)


def drive(make_call: Callable[[], Callable[[np.ndarray], object]], images: np.ndarray,
          callers: int, requests: int) -> Dict[str, float]:
    """``requests`` batch-1 calls spread over ``callers`` threads, each with its own
    ``make_call()``; requests/s over the wall time and latency percentiles (ms)."""
    latencies: List[float] = []
    lock = threading.Lock()
    shares = [requests // callers + (i < requests % callers) for i in range(callers)]

    def caller(index: int):
        call, mine = make_call(), []
        for k in range(shares[index]):
            x = images[(index * 31 + k) % len(images)][None]
            t0 = time.perf_counter()
            call(x)
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = percentiles(latencies)
    return {"requests_per_s": len(latencies) / wall, "p50_ms": stats["p50_ms"],
            "p99_ms": stats["p99_ms"], "n": stats["n"]}


def http_call(url: str):
    """A factory of server calls, one HTTP connection per caller."""
    import tritonclient.http as httpclient

    def make():
        client = httpclient.InferenceServerClient(url)

        def call(x):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.infer(NAME, [inp]).as_numpy("logits")
        return call
    return make


def run(requests: int, warmup: int) -> dict:
    cfg = engine.get_config(SUBJECT)
    raw, _ = datasets.fashion_mnist("test", limit=64)
    images = datasets.to_model_input(raw, cfg).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = engine.export_onnx(engine.create_model(SUBJECT, weights="bundled"),
                                       Path(tmp) / "subject.onnx")
        repo = Path(tmp) / "repo"
        tritonserver.export_triton(onnx_file, repo, name=NAME, target="python", max_batch=16,
                                   preferred_batch_sizes=[4, 8], max_queue_delay_us=2000)
        levels = []
        with engine.load(onnx_file) as rt, tritonserver.Server(repo, 0, 0, 0) as server:
            local, remote = (lambda: rt), http_call(server.url)
            drive(local, images, 1, warmup)
            drive(remote, images, 1, warmup)
            for callers in LEVELS:
                inproc = drive(local, images, callers, requests)
                served = drive(remote, images, callers, requests)
                levels.append({"callers": callers, "in_process": inproc, "server": served,
                               "throughput_ratio": served["requests_per_s"]
                               / inproc["requests_per_s"],
                               "p50_ratio": served["p50_ms"] / inproc["p50_ms"]})
                print(f"{callers} callers: in-process {inproc['requests_per_s']:.1f} req/s "
                      f"p50 {inproc['p50_ms']:.1f} p99 {inproc['p99_ms']:.1f} ms | server "
                      f"{served['requests_per_s']:.1f} req/s p50 {served['p50_ms']:.1f} p99 "
                      f"{served['p99_ms']:.1f} ms | throughput x{levels[-1]['throughput_ratio']:.2f}",
                      flush=True)
    return {"subject": SUBJECT, "requests_per_level": requests, "cpu": cpu_model(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "engine": "openvino (engine.load default) in both", "levels": levels}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="requests per level and side")
    p.add_argument("--warmup", type=int, default=20, help="warm-up requests per side")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    result = run(args.requests, args.warmup)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
