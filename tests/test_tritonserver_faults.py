"""Faults under load on a real Triton Inference Server (the one bundled in nvidia-pytriton):
a flood past the queue is rejected at once (HTTP 503, gRPC UNAVAILABLE); clients that hang up
mid-request leave it healthy; a broken model beside a good one does not stop the good one,
and ``serve`` names the broken one's error; a model file replaced and reloaded while clients
run gives no wrong answer; memory stays flat over 5,000 requests.

The model is the small graph of ``helpers.tiny_onnx`` (its answers are known exactly), so the
faults, not the model, take the time. Only 127.0.0.1 ports are used, every wait is bounded,
and each test checks that no server process is left.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import tritonserver
from engine.fileio import atomic_path
from helpers import processes_mentioning, tiny_onnx

if importlib.util.find_spec("pytriton") is None:
    pytest.skip('the server comes from nvidia-pytriton (pip install -e ".[serve]")',
                allow_module_level=True)
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
from tritonclient.utils import InferenceServerException  # noqa: E402

ATOL = 1e-5
START_TIMEOUT_S = 120


def _x(n=1, seed=0):
    """Images with a different mean per image and channel (the tiny model pools them)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 75, 75)) + rng.uniform(-2, 2, (n, 3, 1, 1))
            ).astype(np.float32)


def _inputs(module, x):
    inp = module.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def _reference(onnx_file, x):
    with engine.load(onnx_file) as rt:
        return rt(x)


def _tiny_repository(tmp, queue_delay_us: int, images: int):
    """``tmp/repo`` serving the tiny model as ``m`` (python backend, batches up to 8); returns
    ``images`` test images and the answers the same engine gives in-process."""
    onnx_file = tiny_onnx(tmp / "m.onnx")
    tritonserver.export_triton(onnx_file, tmp / "repo", target="python", max_batch=8,
                               max_queue_delay_us=queue_delay_us, warmup=False)
    x = _x(images)
    return x, _reference(onnx_file, x)


@pytest.fixture
def no_leftovers(tmp_path):
    """The test's folder; afterwards no process may name it (a server or stub left over)."""
    yield tmp_path
    left = processes_mentioning(str(tmp_path))
    for pid, _ in left:
        os.kill(pid, 9)
    assert left == [], f"processes left behind: {left}"


def _group_rss_kib(pgid: int) -> int:
    """Resident memory of every process in group ``pgid`` (the server and its stubs)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(status.read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (status.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


# --------------------------------------------------------------------------- a flood
def test_flood_past_the_queue_is_rejected_at_once(no_leftovers):
    """The shipped subject (a few ms per image here), one instance,
    batches of one, a queue of 2, and 48 requests at once over HTTP and again over gRPC: the
    overflow is rejected with the server's own status (HTTP 503, gRPC UNAVAILABLE, "Exceeds
    maximum queue size") while it arrives, every accepted request gets its exact answer,
    every request is answered within the client's timeout, and the server still serves
    afterwards."""
    tmp = no_leftovers
    onnx_file = engine.export_onnx(engine.create_model("inception_resnet_v2_fmnist",
                                                       weights="bundled"), tmp / "m.onnx")
    tritonserver.export_triton(onnx_file, tmp / "repo", target="python", max_batch=1,
                               preferred_batch_sizes=[], max_queue_delay_us=0,
                               max_queue_size=2, warmup=False)
    x = _x(48)
    want = _reference(onnx_file, x)
    atol = 1e-4         # the same engine on the same file, FP32 rounding only
    with tritonserver.Server(tmp / "repo", 0, 0, 0) as server:
        # Every request body is built first and written on its own connection before any
        # answer is read, so all 48 reach the server within a few ms, far less than one
        # image's compute. (tritonclient's async HTTP client builds and sends one request at
        # a time, ~10 ms apart here: slower than the model, so nothing had to queue.)
        bodies = [httpclient.InferenceServerClient.generate_request_body(
            _inputs(httpclient, x[i:i + 1])) for i in range(48)]
        connections = [http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=60)
                       for _ in range(48)]
        for connection, (body, json_size) in zip(connections, bodies):
            connection.request("POST", "/v2/models/m/infer", body,
                               {"Inference-Header-Content-Length": str(json_size),
                                "Content-Type": "application/octet-stream"})
        http_codes = []
        for i, connection in enumerate(connections):
            response = connection.getresponse()
            payload = response.read()
            connection.close()
            if response.status == 200:
                header = response.getheader("Inference-Header-Content-Length")
                result = httpclient.InferenceServerClient.parse_response_body(
                    payload, header_length=int(header) if header else None)
                np.testing.assert_allclose(result.as_numpy("logits"), want[i:i + 1],
                                           atol=atol, rtol=0)
            else:
                error = json.loads(payload)["error"]
                assert "Exceeds maximum queue size" in error, error
            http_codes.append(str(response.status))
        grpc = grpcclient.InferenceServerClient(server.endpoints["grpc"])
        done, answers = threading.Semaphore(0), {}

        def callback(i, result, error):
            answers[i] = (result.as_numpy("logits") if error is None else
                          (error.status(), error.message()))
            done.release()
        for i in range(48):
            grpc.async_infer("m", _inputs(grpcclient, x[i:i + 1]), client_timeout=60,
                             callback=lambda result, error, i=i: callback(i, result, error))
        deadline = time.monotonic() + 60
        assert all(done.acquire(timeout=max(0.0, deadline - time.monotonic()))
                   for _ in range(48)), f"{48 - len(answers)} gRPC requests got no answer"
        grpc_codes = []
        for i, answer in sorted(answers.items()):
            if isinstance(answer, tuple):
                grpc_codes.append(answer)
            else:
                np.testing.assert_allclose(answer, want[i:i + 1], atol=atol, rtol=0)
                grpc_codes.append("OK")
        assert server.process.poll() is None and server.ready()
        with httpclient.InferenceServerClient(server.url) as after:
            np.testing.assert_allclose(after.infer("m", _inputs(httpclient, x[:1]))
                                       .as_numpy("logits"), want[:1], atol=atol, rtol=0)
        grpc.close()
    rejected_http = [c for c in http_codes if c != "200"]
    assert rejected_http and set(rejected_http) == {"503"}, http_codes
    assert http_codes.count("200") >= 3, http_codes
    rejected_grpc = [c for c in grpc_codes if c != "OK"]
    assert rejected_grpc and {s for s, _ in rejected_grpc} == {"StatusCode.UNAVAILABLE"}, \
        rejected_grpc
    assert all("Exceeds maximum queue size" in m for _, m in rejected_grpc)
    assert grpc_codes.count("OK") >= 3


# --------------------------------------------------------------------------- hang-ups
def _raw_http(port: int, payload: bytes, read: bool = False) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        if read:
            s.recv(1)


def _still_serves(server, x, want, grpc) -> None:
    """The server is up and gives exact answers over HTTP and gRPC."""
    time.sleep(1.0)
    assert server.process.poll() is None and server.ready()
    http = httpclient.InferenceServerClient(server.url)
    for _ in range(5):
        np.testing.assert_allclose(http.infer("m", _inputs(httpclient, x)).as_numpy("logits"),
                                   want, atol=ATOL, rtol=0)
        np.testing.assert_allclose(grpc.infer("m", _inputs(grpcclient, x)).as_numpy("logits"),
                                   want, atol=ATOL, rtol=0)


def test_clients_that_hang_up_leave_it_healthy(no_leftovers):
    """Sixty HTTP clients hang up: mid-body, right after a whole request, mid-headers, and as
    soon as they connect. The server stays up, and the next requests get exact answers."""
    tmp = no_leftovers
    x, want = _tiny_repository(tmp, queue_delay_us=1000, images=4)
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                   "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    head = (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with tritonserver.Server(tmp / "repo", 0, 0, 0) as server:
        port = server.ports["http"]
        for _ in range(15):
            _raw_http(port, head + body[:len(body) // 2])     # body cut short
            _raw_http(port, head + body)                       # whole request, no read
            _raw_http(port, head[:20])                         # headers cut short
            _raw_http(port, b"")                               # connect, close
        grpc = grpcclient.InferenceServerClient(server.endpoints["grpc"])
        _still_serves(server, x, want, grpc)
        grpc.close()


@pytest.mark.slow
def test_grpc_calls_cancelled_by_their_deadline_leave_it_healthy(no_leftovers):
    """Ten gRPC calls cancelled by a 0.1 ms deadline; the server stays up and answers exactly.

    Not in the default run: the server bundled with nvidia-pytriton 0.7.0 (2.51) can crash
    with SIGSEGV when a cancellation races a response. Upstream, that is
    triton-inference-server/server#7368, fixed by #7840 in r24.12 (2.53). It was seen here
    once in a full-suite run, so this test stays strict and runs with ``-m slow``."""
    tmp = no_leftovers
    x, want = _tiny_repository(tmp, queue_delay_us=1000, images=4)
    with tritonserver.Server(tmp / "repo", 0, 0, 0) as server:
        grpc = grpcclient.InferenceServerClient(server.endpoints["grpc"])
        for _ in range(10):
            with pytest.raises(InferenceServerException, match="Deadline"):
                grpc.infer("m", _inputs(grpcclient, _x(8)), client_timeout=0.0001)
        _still_serves(server, x, want, grpc)
        grpc.close()


# --------------------------------------------------------------------------- a broken model
def _serve(repo: Path, out: Path, *extra: str) -> subprocess.Popen:
    ports = [str(tritonserver.free_port()) for _ in range(3)]
    with open(out, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "engine", "serve", str(repo),
                                 "--http-port", ports[0], "--grpc-port", ports[1],
                                 "--metrics-port", ports[2], "--timeout", str(START_TIMEOUT_S),
                                 *extra], stdout=log, stderr=subprocess.STDOUT)


def test_broken_model_beside_a_good_one(no_leftovers):
    """``serve`` serves the good model and prints the broken one's load error; with
    ``--require-all`` it refuses to start and says why."""
    tmp = no_leftovers
    repo = tmp / "repo"
    good = tiny_onnx(tmp / "good.onnx")
    tritonserver.export_triton(good, repo, name="good", target="python", warmup=False)
    broken = tritonserver.export_triton(tiny_onnx(tmp / "b.onnx"), repo, name="broken",
                                        target="python", warmup=False)
    (broken / "1" / "model.onnx").write_bytes(b"not an ONNX file")
    out = tmp / "serve.out"
    proc = _serve(repo, out)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 30
        while b"Ctrl-C stops it" not in out.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.25)
        text = out.read_text()
        assert "model    good (version 1)" in text
        assert "warning: model broken failed to load, not served:" in text
        assert "model.onnx: not a readable ONNX model" in text
        port = int(text.split("http://127.0.0.1:")[1].split()[0])
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = _x(2)
        np.testing.assert_allclose(http.infer("good", _inputs(httpclient, x)).as_numpy("logits"),
                                   _reference(good, x), atol=ATOL, rtol=0)
        with pytest.raises(InferenceServerException, match="broken"):
            http.infer("broken", _inputs(httpclient, x))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    proc = _serve(repo, out, "--require-all")
    assert proc.wait(timeout=START_TIMEOUT_S + 30) == 2
    text = out.read_text()
    assert "failed to load 'broken' version 1" in text and "not a readable ONNX model" in text


# --------------------------------------------------------------------------- a reload
def test_model_replaced_and_reloaded_while_serving(no_leftovers):
    """Four clients send requests while the model file is replaced by one with other
    weights and reloaded through the repository API (``--model-control explicit``): every
    answer is exactly the old model's or the new one's, none fails, and once the reload has
    returned every answer is the new model's."""
    tmp = no_leftovers
    repo = tmp / "repo"
    old = tiny_onnx(tmp / "old.onnx", seed=1)
    new = tiny_onnx(tmp / "new.onnx", seed=2)
    d = tritonserver.export_triton(old, repo, name="m", target="python", max_batch=8,
                                   max_queue_delay_us=500, warmup=False)
    x = _x(3)
    want_old, want_new = _reference(old, x), _reference(new, x)
    assert np.abs(want_old - want_new).max() > 0.1
    with tritonserver.Server(repo, 0, 0, 0, model_control="explicit") as server:
        stop, reloaded = threading.Event(), threading.Event()
        seen = {"old": 0, "new": 0, "new after reload": 0}
        failures = []

        def client():
            http = httpclient.InferenceServerClient(server.url)
            while not stop.is_set():
                after = reloaded.is_set()
                try:
                    got = http.infer("m", _inputs(httpclient, x)).as_numpy("logits")
                except InferenceServerException as e:
                    failures.append(str(e))
                    continue
                if np.allclose(got, want_new, atol=ATOL, rtol=0):
                    seen["new after reload" if after else "new"] += 1
                elif np.allclose(got, want_old, atol=ATOL, rtol=0) and not after:
                    seen["old"] += 1
                else:
                    failures.append(f"wrong answer (after reload: {after})")

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client) for _ in range(4)]
            time.sleep(1.0)
            with atomic_path(d / "1" / "model.onnx") as tmp_file:
                Path(tmp_file).write_bytes(new.read_bytes())
            req = urllib.request.Request(f"{server.endpoints['http']}/v2/repository/models/m/load",
                                         data=b"{}", method="POST")
            with urllib.request.urlopen(req, timeout=120) as r:
                assert r.status == 200
            reloaded.set()
            time.sleep(1.0)
            stop.set()
            for c in clients:
                c.result(timeout=60)
    assert failures == []
    assert seen["old"] > 0 and seen["new after reload"] > 0, seen


# --------------------------------------------------------------------------- memory
def test_rss_flat_over_5000_requests(no_leftovers):
    """The server and its stub together: resident memory after 5,000 more requests is within
    5% of what it was after 500 warm-up requests."""
    tmp = no_leftovers
    x, want = _tiny_repository(tmp, queue_delay_us=200, images=1)
    with tritonserver.Server(tmp / "repo", 0, 0, 0) as server:
        def send(n):
            http = httpclient.InferenceServerClient(server.url)
            for _ in range(n):
                got = http.infer("m", _inputs(httpclient, x)).as_numpy("logits")
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(send, [125] * 4))
            before = _group_rss_kib(server.process.pid)
            list(pool.map(send, [1250] * 4))
            after = _group_rss_kib(server.process.pid)
    assert before > 0
    assert after < 1.05 * before, f"RSS {before} KiB -> {after} KiB"
