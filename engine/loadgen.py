"""A closed-loop load generator for a Triton Inference Server on this machine, and the server's
own Prometheus counters read beside it.

:func:`drive` keeps ``concurrency`` requests in flight (each client sends its next request
when its last one is answered) over ``tritonclient``'s asyncio HTTP client, until ``requests``
have been sent or ``seconds`` have passed, whichever comes first; requests already in flight
then finish (bounded by a per-request timeout). Each request's latency is the time from the
call to its answer as the client sees it. :func:`summarize` turns the latencies into the
percentiles of :func:`engine.timing.percentiles` and a throughput (images answered over the
wall time of the point).

The server's side (:func:`scrape`, :func:`server_side`): ``nv_inference_*`` counters of the
metrics endpoint, read before and after a point. They are cumulative, so the differences over
the point give the mean time a request waited in the queue and spent in the model (input,
inference and output), and the mean batch the dynamic batcher formed (inferences per
execution). The names are those of the server bundled in nvidia-pytriton (2.51).

Only loopback addresses are driven: this tool measures a server on this machine, it is no
traffic generator for others'.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import EngineError, InputError
from .timing import percentiles

# the server's data type -> the wire name tritonclient uses, and numpy's
WIRE_DTYPES = {"TYPE_FP32": ("FP32", np.float32), "TYPE_FP16": ("FP16", np.float16),
               "TYPE_INT8": ("INT8", np.int8), "TYPE_UINT8": ("UINT8", np.uint8),
               "TYPE_INT32": ("INT32", np.int32), "TYPE_INT64": ("INT64", np.int64),
               "TYPE_BOOL": ("BOOL", np.bool_)}
# cumulative counters per model (2.51 names); durations in microseconds
COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure",
            "nv_inference_count", "nv_inference_exec_count", "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us")
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def check_loopback(url: str) -> str:
    """``url`` (``host:port``) when its host is this machine; else an :class:`InputError`."""
    host = url.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(f"{url}: the load generator drives servers on this machine only "
                         "(127.0.0.1 or localhost)")
    return url


def make_inputs(inputs: Sequence[dict], batch: int = 1, seed: int = 0) -> List[tuple]:
    """``(name, wire dtype, array)`` per model input: seeded random values of the input's
    ``dims`` with a leading batch of ``batch``. ``inputs`` are the config's input entries
    (``name``, ``data_type``, ``dims``); a variable dim (-1) has no size to send."""
    rng = np.random.default_rng(seed)
    out = []
    for t in inputs:
        if t["data_type"] not in WIRE_DTYPES:
            raise InputError(f"input {t['name']!r} has type {t['data_type']}; the load "
                             f"generator sends {', '.join(WIRE_DTYPES)}")
        dims = [int(d) for d in t["dims"]]
        if any(d < 1 for d in dims):
            raise InputError(f"input {t['name']!r} has variable dims {dims}: the load "
                             "generator needs a fixed shape; give the config fixed dims")
        wire, dtype = WIRE_DTYPES[t["data_type"]]
        shape = [batch] + dims
        if np.issubdtype(dtype, np.floating):
            x = rng.standard_normal(shape).astype(dtype)
        else:
            x = rng.integers(0, 2 if dtype == np.bool_ else 100, shape).astype(dtype)
        out.append((t["name"], wire, x))
    return out


def summarize(latencies_s: Sequence[float], wall_s: float, images_per_request: int,
              failures: int = 0, first_error: Optional[str] = None) -> Dict[str, object]:
    """The client's figures of one point: latency percentiles (ms, of the answered requests),
    throughput (answered images per second of wall time) and the failures."""
    out: Dict[str, object] = {"requests": len(latencies_s), "failures": int(failures),
                              "error": first_error, "wall_s": float(wall_s)}
    if latencies_s:
        stats = percentiles([t * 1e3 for t in latencies_s])
        out.update({k: stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")})
        out["throughput_ips"] = len(latencies_s) * images_per_request / wall_s if wall_s > 0 \
            else 0.0
    else:
        out.update(p50_ms=None, p90_ms=None, p99_ms=None, mean_ms=None, throughput_ips=0.0)
    return out


async def _drive(url: str, model: str, inputs: List[tuple], concurrency: int, requests: int,
                 seconds: float, timeout_s: float) -> Dict[str, object]:
    import tritonclient.http as httpclient
    from tritonclient.http.aio import InferenceServerClient

    latencies: List[float] = []
    failures, errors, sent = [0], [], [0]
    batch = int(inputs[0][2].shape[0])
    # a connection per client, so no request waits for a free connection
    async with InferenceServerClient(url, conn_limit=concurrency,
                                     conn_timeout=timeout_s) as client:
        payload = []
        for name, wire, x in inputs:
            inp = httpclient.InferInput(name, list(x.shape), wire)
            inp.set_data_from_numpy(x, binary_data=True)
            payload.append(inp)
        deadline = time.perf_counter() + seconds

        async def one_client():
            while sent[0] < requests and time.perf_counter() < deadline:
                sent[0] += 1   # one event loop thread: no lock needed
                t0 = time.perf_counter()
                try:
                    await client.infer(model, payload)
                except Exception as e:  # noqa: BLE001 (every failure is counted and quoted)
                    failures[0] += 1
                    if not errors:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - t_start
    return summarize(latencies, wall, batch, failures[0], errors[0] if errors else None)


def drive(url: str, model: str, inputs: List[tuple], concurrency: int, requests: int,
          seconds: float, timeout_s: float = 60.0) -> Dict[str, object]:
    """Drive ``model`` at ``url`` (``127.0.0.1:PORT``, HTTP) with ``concurrency`` clients in a
    closed loop, sending ``inputs`` (from :func:`make_inputs`), until ``requests`` are sent or
    ``seconds`` pass; returns :func:`summarize`'s figures."""
    check_loopback(url)
    for what, value in (("concurrency", concurrency), ("requests", requests)):
        if int(value) < 1:
            raise InputError(f"{what} must be >= 1, got {value}")
    if not seconds > 0:
        raise InputError(f"seconds must be > 0, got {seconds}")
    return asyncio.run(_drive(url, model, inputs, int(concurrency), int(requests),
                              float(seconds), float(timeout_s)))


# --------------------------------------------------------------------------- server side
def parse_metrics(text: str, model: str) -> Dict[str, float]:
    """The :data:`COUNTERS` of ``model`` in Prometheus text ``text``, summed over versions
    and failure reasons (a counter the text lacks is 0)."""
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in out:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if labels.get("model") == model:
            out[m.group(1)] += float(m.group(3))
    return out


def scrape(metrics_url: str, model: str, timeout: float = 5.0) -> Dict[str, float]:
    """:func:`parse_metrics` of the server's metrics endpoint (``http://127.0.0.1:P/metrics``)."""
    check_loopback(metrics_url.split("//", 1)[-1].split("/", 1)[0])
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
            return parse_metrics(r.read().decode("utf-8", "replace"), model)
    except (OSError, urllib.error.URLError) as e:
        raise EngineError(f"cannot read the server's metrics at {metrics_url}: {e}") from None


def server_side(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, object]:
    """The server's figures over a point from two :func:`scrape` readings: requests it
    answered and failed, mean queue and compute time per request (ms) and mean batch."""
    d = {k: after[k] - before[k] for k in COUNTERS}
    ok, execs = d["nv_inference_request_success"], d["nv_inference_exec_count"]
    compute = (d["nv_inference_compute_input_duration_us"]
               + d["nv_inference_compute_infer_duration_us"]
               + d["nv_inference_compute_output_duration_us"])
    return {"server_requests": int(ok), "server_failures": int(d["nv_inference_request_failure"]),
            "queue_ms": d["nv_inference_queue_duration_us"] / ok / 1e3 if ok else None,
            "compute_ms": compute / ok / 1e3 if ok else None,
            "mean_batch": d["nv_inference_count"] / execs if execs else None}
