"""A real Triton Inference Server (the one bundled in nvidia-pytriton) serving the shipped
subject through ``inception-engine serve``: HTTP and gRPC answers equal ``engine.load`` on
the same file, labelled top-k, dynamic batching under concurrent clients, clear errors for bad
requests, and no process left once it stops.

Only 127.0.0.1 ports are used and every wait is bounded.
"""
from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import engine
from engine import datasets, tritonserver
from engine.preprocess import labels_for
from helpers import port_is_free, processes_mentioning, tiny_onnx

if importlib.util.find_spec("pytriton") is None:
    pytest.skip('the server comes from nvidia-pytriton (pip install -e ".[serve]")',
                allow_module_level=True)
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
from tritonclient.utils import InferenceServerException  # noqa: E402

SUBJECT = "inception_resnet_v2_fmnist"
NAME = "subject"
ATOL = 1e-4               # the server runs the same engine on the same file: FP32 rounding only
START_TIMEOUT_S = 180
CLIENTS, REQUESTS = 8, 100


def _infer_input(module, x, name="input", dtype="FP32"):
    inp = module.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return inp


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The subject exported, written as a python-backend repository and served by
    ``inception-engine serve`` in a subprocess; yields (process, ports, onnx, repo)."""
    root = tmp_path_factory.mktemp("served")
    onnx_file = engine.export_onnx(engine.create_model(SUBJECT, weights="bundled"),
                                   root / "subject.onnx")
    repo = root / "repo"
    tritonserver.export_triton(onnx_file, repo, name=NAME, target="python", max_batch=16,
                               preferred_batch_sizes=[4, 8], max_queue_delay_us=2000)
    ports = {k: tritonserver.free_port() for k in ("http", "grpc", "metrics")}
    log = open(root / "serve.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(repo),
                             "--http-port", str(ports["http"]), "--grpc-port",
                             str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
                             "--timeout", str(START_TIMEOUT_S)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S + 30
    while b"Ctrl-C stops it" not in (root / "serve.out").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not come up:\n{(root / 'serve.out').read_text()}")
        time.sleep(0.25)
    yield proc, ports, onnx_file, repo
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def images():
    """Fashion-MNIST test images as model input, their true labels, the runtime's outputs."""
    cfg = engine.get_config(SUBJECT)
    raw, labels = datasets.fashion_mnist("test", limit=16)
    return datasets.to_model_input(raw, cfg).numpy(), labels


@pytest.fixture(scope="module")
def reference(served, images):
    with engine.load(served[2]) as rt:
        return rt(images[0])


def test_serve_prints_endpoints(served):
    out = (served[3].parent / "serve.out").read_text()
    assert f"http://127.0.0.1:{served[1]['http']}" in out
    assert f"127.0.0.1:{served[1]['grpc']}" in out


def test_http_and_grpc_equal_engine_load(served, images, reference):
    x = images[0][:5]
    http = httpclient.InferenceServerClient(f"127.0.0.1:{served[1]['http']}")
    got = http.infer(NAME, [_infer_input(httpclient, x)]).as_numpy("logits")
    np.testing.assert_allclose(got, reference[:5], atol=ATOL, rtol=0)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{served[1]['grpc']}")
    got = grpc.infer(NAME, [_infer_input(grpcclient, x)]).as_numpy("logits")
    np.testing.assert_allclose(got, reference[:5], atol=ATOL, rtol=0)


def test_classification_labels(served, images, reference):
    """The server's classification extension: ``score:index:label``, labels from the config's
    label file, in the runtime's order; the subject gets most test images right."""
    x, truth = images
    names = labels_for(engine.get_config(SUBJECT))
    http = httpclient.InferenceServerClient(f"127.0.0.1:{served[1]['http']}")
    out = http.infer(NAME, [_infer_input(httpclient, x)],
                     outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    top = [[entry.decode().split(":") for entry in row] for row in out.as_numpy("logits")]
    want = np.argsort(-reference, axis=1)[:, :3]
    assert [[int(i) for _, i, _ in row] for row in top] == want.tolist()
    assert [[label for _, _, label in row] for row in top] == \
        [[names[i] for i in row] for row in want]
    hits = sum(row[0][2] == names[t] for row, t in zip(top, truth))
    assert hits >= 0.8 * len(truth), f"top-1 right on {hits}/{len(truth)}"


def _batch_counts(client) -> dict:
    stats = client.get_inference_statistics(NAME)["model_stats"][0]["batch_stats"]
    return {int(s["batch_size"]): int(s["compute_infer"]["count"]) for s in stats}


def test_concurrent_clients_are_batched(served, images, reference):
    """8 clients x 100 single-image requests: no error, each answer the one a lone request
    gets, and the dynamic batcher ran batches of more than one request."""
    x = images[0]
    url = f"127.0.0.1:{served[1]['http']}"
    before = _batch_counts(httpclient.InferenceServerClient(url))
    errors, worst = [], [0.0]

    def client(seed):
        conn = httpclient.InferenceServerClient(url)
        for k in range(REQUESTS):
            i = (seed * 7 + k) % len(x)
            try:
                got = conn.infer(NAME, [_infer_input(httpclient, x[i:i + 1])]).as_numpy("logits")
                worst[0] = max(worst[0], float(np.abs(got[0] - reference[i]).max()))
            except InferenceServerException as e:
                errors.append(str(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "clients still running after 300 s"
    assert errors[:3] == [] and len(errors) == 0
    assert worst[0] <= ATOL
    # an execution's statistics are recorded after its responses are sent: wait for the last
    deadline = time.monotonic() + 15
    while True:
        after = _batch_counts(httpclient.InferenceServerClient(url))
        grown = {b: n - before.get(b, 0) for b, n in after.items() if n > before.get(b, 0)}
        if sum(b * n for b, n in grown.items()) >= CLIENTS * REQUESTS or \
                time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(b * n for b, n in grown.items()) == CLIENTS * REQUESTS, grown
    assert max(grown) > 1, f"executions by batch size: {grown}"


@pytest.mark.parametrize("case, message", [
    ("shape", "unexpected shape for input 'input'"),
    ("dtype", "data-type is 'FP64', but model 'subject' expects 'FP32'"),
    ("name", "unexpected inference input 'image'"),
    ("nan", "input holds 1 NaN and 0 Inf values"),
])
def test_bad_request_is_refused_and_server_keeps_serving(served, images, reference, case,
                                                         message):
    x = images[0][:1]
    bad = {"shape": (x[:, :, :70], "input", "FP32"),
           "dtype": (x.astype(np.float64), "input", "FP64"),
           "name": (x, "image", "FP32"),
           "nan": (np.where(np.arange(x.size).reshape(x.shape) == 0, np.nan, x)
                   .astype(np.float32), "input", "FP32")}[case]
    http = httpclient.InferenceServerClient(f"127.0.0.1:{served[1]['http']}")
    with pytest.raises(InferenceServerException, match=message) as info:
        http.infer(NAME, [_infer_input(httpclient, *bad)])
    assert info.value.status() == "400"
    got = http.infer(NAME, [_infer_input(httpclient, x)]).as_numpy("logits")
    np.testing.assert_allclose(got, reference[:1], atol=ATOL, rtol=0)


def test_model_that_fails_to_load_is_reported(tmp_path):
    """A broken model file: start fails fast with the server's reason, and stops the server."""
    repo = tmp_path / "repo"
    d = tritonserver.export_triton(tiny_onnx(tmp_path / "m.onnx"), repo, target="python",
                                   warmup=False)
    (d / "1" / "model.onnx").write_bytes(b"not an ONNX file")
    server = tritonserver.Server(repo, 0, 0, 0)
    t0 = time.monotonic()
    with pytest.raises(engine.EngineError, match=r"failed to load 'm' version 1: .*model\.onnx: "
                       "not a readable ONNX model"):
        server.start(timeout=120)
    assert time.monotonic() - t0 < 100
    assert server.process is None and processes_mentioning(str(repo)) == []


def test_stop_leaves_no_process(served):
    """Last: SIGTERM to ``serve`` stops the server and its stubs; nothing names the
    repository afterwards and the ports are free again."""
    proc, ports, _, repo = served
    assert processes_mentioning(str(repo)), "no server process found while serving"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert processes_mentioning(str(repo)) == []
    assert all(port_is_free(port) for port in ports.values())
