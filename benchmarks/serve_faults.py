"""A flood past the queue: what a bounded queue (``serve-export --max-queue-size``) buys.

Subject: the IR-v2 subject (``inception_resnet_v2_fmnist``, bundled weights, 75x75) written
twice into one python-backend repository, one instance each, batches of one, no queue delay
(``--delay-us`` sets one): ``bounded`` with ``max_queue_size`` 2, ``unbounded`` without a
limit. Each round sends a burst
of ``--burst`` single-image gRPC requests at once to one model, then to the other (rounds
alternate which goes first); the latency of a request is from its submission to its
callback. Reported per model: answered and rejected counts, p50/p99 latency of the answered
and of the rejected requests, the server's own mean queue and compute time per answered
request; and the bounded-to-unbounded p99 ratio of the answered ones, both from this one run.

    python benchmarks/serve_faults.py --rounds 4 --burst 48 --out benchmarks/results/serve_faults.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import datasets, tritonserver  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine.timing import cpu_model, percentiles  # noqa: E402

SUBJECT = "inception_resnet_v2_fmnist"


def burst(client, grpcclient, model: str, images: np.ndarray, n: int):
    """``n`` requests submitted at once; ``(answered ms, rejected ms, other errors)``."""
    done, lock = threading.Semaphore(0), threading.Lock()
    answered, rejected, other = [], [], []

    def callback(t0, result, error):
        ms = (time.perf_counter() - t0) * 1e3
        with lock:
            if error is None:
                answered.append(ms)
            elif "Exceeds maximum queue size" in error.message():
                rejected.append(ms)
            else:
                other.append(error.message())
        done.release()
    for i in range(n):
        x = images[i % len(images)][None]
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        t0 = time.perf_counter()
        client.async_infer(model, [inp], client_timeout=120,
                           callback=lambda result, error, t0=t0: callback(t0, result, error))
    for _ in range(n):
        if not done.acquire(timeout=180):
            raise RuntimeError(f"{model}: a request got no answer within 180 s")
    return answered, rejected, other


def _server_stats(client, model: str) -> dict:
    """The server's own mean queue and compute time per answered request (ms), warm-up
    included."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    inf = stats["inference_stats"]
    n = int(inf["success"].get("count", 0)) or 1
    return {"answered": int(inf["success"].get("count", 0)),
            "queue_ms_mean": int(inf["queue"].get("ns", 0)) / n / 1e6,
            "compute_infer_ms_mean": int(inf["compute_infer"].get("ns", 0)) / n / 1e6}


def run(rounds: int, n: int, delay_us: int = 0) -> dict:
    import tritonclient.grpc as grpcclient
    cfg = engine.get_config(SUBJECT)
    raw, _ = datasets.fashion_mnist("test", limit=64)
    images = datasets.to_model_input(raw, cfg).numpy()
    samples = {m: {"answered": [], "rejected": [], "other": []}
               for m in ("bounded", "unbounded")}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = engine.export_onnx(engine.create_model(SUBJECT, weights="bundled"),
                                       Path(tmp) / "subject.onnx")
        for name, queue in (("bounded", 2), ("unbounded", 0)):
            tritonserver.export_triton(onnx_file, Path(tmp) / "repo", name=name,
                                       target="python", max_batch=1, preferred_batch_sizes=[],
                                       max_queue_delay_us=delay_us, max_queue_size=queue)
        with tritonserver.Server(Path(tmp) / "repo", 0, 0, 0) as server:
            client = grpcclient.InferenceServerClient(server.endpoints["grpc"])
            for m in samples:                       # warm-up, not recorded
                burst(client, grpcclient, m, images, 4)
            for r in range(rounds):
                for m in (("bounded", "unbounded") if r % 2 == 0 else ("unbounded", "bounded")):
                    for key, got in zip(("answered", "rejected", "other"),
                                        burst(client, grpcclient, m, images, n)):
                        samples[m][key] += got
            server_side = {m: _server_stats(client, m) for m in samples}
            client.close()
    out = {}
    for m, s in samples.items():
        out[m] = {"answered": len(s["answered"]), "rejected": len(s["rejected"]),
                  "other_errors": s["other"][:3],
                  "answered_ms": percentiles(s["answered"]) if s["answered"] else None,
                  "rejected_ms": percentiles(s["rejected"]) if s["rejected"] else None,
                  "server": server_side[m]}
    out["answered_p99_ratio_bounded_to_unbounded"] = (
        out["bounded"]["answered_ms"]["p99_ms"] / out["unbounded"]["answered_ms"]["p99_ms"])
    return {"subject": SUBJECT, "rounds": rounds, "burst": n, "queue_delay_us": delay_us,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "models": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4, help="bursts per model")
    p.add_argument("--burst", type=int, default=48, help="requests per burst")
    p.add_argument("--delay-us", type=int, default=0,
                   help="both models' max queue delay in microseconds (default 0)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    result = run(args.rounds, args.burst, args.delay_us)
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
