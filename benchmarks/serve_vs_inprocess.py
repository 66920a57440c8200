"""Served against in-process, interleaved: the bundled Triton Inference Server (python
backend, this package's runtime inside it) beside ``engine.load`` on the same file.

Subject: the IR-v2 subject (``inception_resnet_v2_fmnist``, bundled weights, 75x75). The
served side is a repository entry (``--repo``/``--model``, e.g. one serve-tune wrote; default:
a fresh ``serve-export`` with its defaults), driven by :func:`engine.loadgen.drive` (closed
loop, asyncio HTTP on 127.0.0.1). The in-process side is one runtime shared by as many threads
as the served side has clients, each calling it with one image at a time, in a closed loop
too. Both send the same seeded image, bounded by the same requests and seconds per point.

For each round and each concurrency (1, 4, 8) both sides are measured back to back, the
order alternating between rounds, so a change in the machine's load falls on both; the
ratios (served / in-process) are taken per round and their median is reported, with the
load average before and after each round and the CPU's ISA.

    python benchmarks/serve_vs_inprocess.py --rounds 3 --requests 300 --seconds 4 \
        --out benchmarks/results/serve_vs_inprocess.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import loadgen, servetune, tritonserver  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine.timing import cpu_model  # noqa: E402

SUBJECT = "inception_resnet_v2_fmnist"
LEVELS = (1, 4, 8)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")


def isa() -> List[str]:
    """The ISA flags of :data:`ISA_FLAGS` this CPU has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return [f for f in ISA_FLAGS if f in flags]


def loadavg() -> List[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def drive_threads(call: Callable[[np.ndarray], object], x: np.ndarray, concurrency: int,
                  requests: int, seconds: float) -> Dict[str, object]:
    """``concurrency`` threads calling ``call(x)`` in a closed loop until ``requests`` are
    sent or ``seconds`` pass: :func:`engine.loadgen.summarize`'s figures."""
    latencies: List[float] = []
    lock = threading.Lock()
    sent = [0]
    deadline = time.perf_counter() + seconds

    def caller():
        mine = []
        while True:
            with lock:
                if sent[0] >= requests or time.perf_counter() >= deadline:
                    break
                sent[0] += 1
            t0 = time.perf_counter()
            call(x)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return loadgen.summarize(latencies, time.perf_counter() - t0, int(x.shape[0]))


def _median(values):
    return statistics.median(values) if values else None


def run(repo, name, onnx_file, rounds: int, requests: int, seconds: float,
        warmup: int) -> dict:
    mdir = servetune.model_dir(repo, name)
    config = servetune.read_config(mdir)
    data = loadgen.make_inputs(servetune.input_spec(config))
    x = data[0][2]
    per_round = []
    with engine.load(onnx_file) as rt, tritonserver.Server(repo, 0, 0, 0) as server:
        def served(c, n):
            return loadgen.drive(server.url, name, data, c, n, seconds)

        def local(c, n):
            return drive_threads(rt, x, c, n, seconds)

        for c in LEVELS:     # warm both sides at every level once, unmeasured
            served(c, warmup)
            local(c, warmup)
        for r in range(rounds):
            before = loadavg()
            levels = {}
            for c in LEVELS:
                order = [("in_process", local), ("served", served)]
                if r % 2:
                    order.reverse()
                levels[c] = {key: fn(c, requests) for key, fn in order}
                a, b = levels[c]["in_process"], levels[c]["served"]
                print(f"round {r + 1} @ {c}: in-process {a['throughput_ips']:.1f} img/s "
                      f"p50 {a['p50_ms']:.2f} p99 {a['p99_ms']:.2f} ms | served "
                      f"{b['throughput_ips']:.1f} img/s p50 {b['p50_ms']:.2f} p99 "
                      f"{b['p99_ms']:.2f} ms", flush=True)
            per_round.append({"loadavg_before": before, "loadavg_after": loadavg(),
                              "levels": levels})
    summary = []
    for c in LEVELS:
        pts = [rd["levels"][c] for rd in per_round]
        summary.append({
            "concurrency": c,
            **{f"{side}_{k}": _median([p[side][k] for p in pts])
               for side in ("in_process", "served")
               for k in ("throughput_ips", "p50_ms", "p99_ms")},
            "throughput_ratio": _median([p["served"]["throughput_ips"]
                                         / p["in_process"]["throughput_ips"] for p in pts]),
            "p50_ratio": _median([p["served"]["p50_ms"] / p["in_process"]["p50_ms"]
                                  for p in pts]),
            "p99_ratio": _median([p["served"]["p99_ms"] / p["in_process"]["p99_ms"]
                                  for p in pts]),
            "failures": sum(p["served"]["failures"] for p in pts)})
    return {"subject": SUBJECT, "model": name, "config": servetune.setting_of(config).label(),
            "rounds": rounds, "requests_per_point": requests, "seconds_per_point": seconds,
            "cpu": cpu_model(), "isa": isa(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "engine": "engine.load default (OpenVINO) "
            "on both sides", "summary": summary, "rounds_detail": per_round}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", help="model repository to serve (default: a fresh serve-export "
                   "of the subject with its defaults)")
    p.add_argument("--model", default="subject", help="the model's name in --repo")
    p.add_argument("--onnx", help="the model file the repository serves (default: read from "
                   "the repository entry)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=300, help="requests per point at most")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per point at most")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests per level")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo
        if repo is None:
            onnx = engine.export_onnx(engine.create_model(SUBJECT, weights="bundled"),
                                      Path(tmp) / "subject.onnx")
            repo = Path(tmp) / "repo"
            tritonserver.export_triton(onnx, repo, name=args.model, target="python")
        onnx = args.onnx or next(servetune.model_dir(repo, args.model).glob("*/model.onnx"))
        result = run(repo, args.model, onnx, args.rounds, args.requests, args.seconds,
                     args.warmup)
    for s in result["summary"]:
        print(f"concurrency {s['concurrency']}: served / in-process throughput "
              f"x{s['throughput_ratio']:.2f}, p50 x{s['p50_ratio']:.2f}, p99 "
              f"x{s['p99_ratio']:.2f}")
    print(f"CPU {result['cpu']} ({' '.join(result['isa'])}), load averages "
          f"{[rd['loadavg_before'] for rd in result['rounds_detail']]}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
