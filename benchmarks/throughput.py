"""OpenVINO under many callers: images/s with 2 caller threads against 1, and RSS over 5,000 calls.

Throughput: one runtime loaded with ``hint="throughput"`` (its pool holds one infer request per
stream OpenVINO chooses), batch 1. Each round times 1 caller, then 2 callers, on the same
runtime in this one process, each caller running ``engine.timing.time_calls`` for
``--duration`` seconds; images/s is the calls of all callers over the round's wall time. The
ratio is taken within a round (a busy shared machine slows both alike); the median over
rounds is reported. Subjects: the IR-v2 subject (``inception_resnet_v2_fmnist``, width 0.25,
75x75) and, unless ``--no-full``, the full IR-v2 at 299x299 (random weights: speed does not
depend on them).

Memory: ``--calls`` (default 5,000) batch-1 inferences of the subject on one runtime, with
the resident set size read at call 500 and at the last call (psutil when installed, else
``VmRSS`` in /proc/self/status); the growth between them is reported in percent. No assertion:
this is a benchmark; it prints and writes JSON.

    python benchmarks/throughput.py --out benchmarks/results/throughput.json
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
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine.timing import cpu_model, percentiles, time_calls  # noqa: E402

SUBJECT = "inception_resnet_v2_fmnist"
FULL = "inception_resnet_v2"
RSS_FROM_CALL = 500


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no psutil and no VmRSS in /proc/self/status: cannot read RSS")
    return int(psutil.Process().memory_info().rss)


def export(name: str, folder: Path) -> Path:
    """``name`` at its own input size, exported to ``folder``."""
    import torch
    torch.manual_seed(0)
    path = folder / f"{name}.onnx"
    engine.export_onnx(engine.create_model(name), path)
    return path


def images_for(rt, count: int = 8) -> np.ndarray:
    c, h, w = rt.config.input_size
    return np.random.default_rng(0).standard_normal((count, 1, c, h, w)).astype(np.float32)


def callers_round(rt, images: np.ndarray, callers: int, duration: float) -> Dict[str, float]:
    """``callers`` threads calling ``rt`` at batch 1 for ``duration`` seconds each, together."""
    barrier = threading.Barrier(callers + 1)
    samples: List[List[float]] = [[] for _ in range(callers)]

    def work(k):
        x = images[k % len(images)]
        barrier.wait()
        samples[k] = time_calls(lambda: rt(x), iters=1, warmup=0, duration=duration,
                                cuda=False)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    calls = sum(len(s) for s in samples)
    lat = percentiles([ms for s in samples for ms in s])
    return {"callers": callers, "calls": calls, "wall_s": wall, "images_per_s": calls / wall,
            "p50_ms": lat["p50_ms"], "p90_ms": lat["p90_ms"]}


def throughput(path: Path, rounds: int, duration: float) -> Dict[str, object]:
    """1 caller vs 2 callers on one ``hint="throughput"`` runtime, ``rounds`` times."""
    with engine.load(path, backend="openvino", hint="throughput") as rt:
        images = images_for(rt)
        for x in images[:2]:
            rt(x)                                          # first calls set up the streams
        rows = []
        for r in range(rounds):
            one = callers_round(rt, images, 1, duration)
            two = callers_round(rt, images, 2, duration)
            rows.append({"round": r, "one": one, "two": two,
                         "ratio": two["images_per_s"] / one["images_per_s"]})
            print(f"  round {r}: 1 caller {one['images_per_s']:.1f} img/s (p50 "
                  f"{one['p50_ms']:.1f} ms), 2 callers {two['images_per_s']:.1f} img/s (p50 "
                  f"{two['p50_ms']:.1f} ms), ratio {rows[-1]['ratio']:.2f}", flush=True)
        return {"model": rt.config.name, "input_size": list(rt.config.input_size),
                "num_requests": rt.num_requests,
                "num_streams": int(rt.compiled.get_property("NUM_STREAMS")),
                "rounds": rows,
                "median_ratio": float(np.median([row["ratio"] for row in rows])),
                "median_one_ips": float(np.median([row["one"]["images_per_s"] for row in rows])),
                "median_two_ips": float(np.median([row["two"]["images_per_s"] for row in rows]))}


def rss_growth(path: Path, calls: int) -> Dict[str, float]:
    """RSS at call ``RSS_FROM_CALL`` and at call ``calls`` of one runtime, batch 1."""
    with engine.load(path, backend="openvino") as rt:
        images = images_for(rt)
        start = time.perf_counter()
        at_start = None
        for i in range(1, calls + 1):
            rt(images[i % len(images)])
            if i == RSS_FROM_CALL:
                at_start = rss_bytes()
        at_end = rss_bytes()
        wall = time.perf_counter() - start
    return {"calls": calls, "rss_at_call": RSS_FROM_CALL, "rss_start_mib": at_start / 2**20,
            "rss_end_mib": at_end / 2**20,
            "growth_pct": 100.0 * (at_end - at_start) / at_start, "wall_s": wall,
            "rss_source": "psutil" if _has_psutil() else "/proc/self/status VmRSS"}


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput.json"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per caller count")
    ap.add_argument("--calls", type=int, default=5000, help="inferences for the RSS check")
    ap.add_argument("--no-full", action="store_true", help="skip the full IR-v2 at 299")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.calls <= RSS_FROM_CALL:
        ap.error(f"--rounds >= 1, --duration > 0 and --calls > {RSS_FROM_CALL} are needed")
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
              "openvino": __import__("openvino").__version__, "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        names = [SUBJECT] + ([] if args.no_full else [FULL])
        paths = {}
        for name in names:
            t0 = time.perf_counter()
            paths[name] = export(name, Path(tmp))
            print(f"exported {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        for name in names:
            print(f"{name}: hint=throughput, batch 1, {args.rounds} rounds of "
                  f"{args.duration:g} s per caller count", flush=True)
            result["throughput"].append(throughput(paths[name], args.rounds, args.duration))
        print(f"RSS over {args.calls} calls of {SUBJECT} (hint=latency, batch 1)", flush=True)
        result["rss"] = rss_growth(paths[SUBJECT], args.calls)
    rss = result["rss"]
    print(f"  RSS {rss['rss_start_mib']:.1f} MiB at call {rss['rss_at_call']} -> "
          f"{rss['rss_end_mib']:.1f} MiB at call {rss['calls']}: {rss['growth_pct']:+.2f}% "
          f"({rss['rss_source']})")
    result["loadavg_1m_end"] = os.getloadavg()[0]
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
