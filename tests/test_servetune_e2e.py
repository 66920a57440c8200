"""serve-tune against the real server (the one bundled in nvidia-pytriton), on the shipped
subject: a two-setting sweep rewrites the repository's config, keeps the old one, and a
server started on the repository afterwards runs the new setting and answers as
``engine.load`` does; a target no point meets writes nothing. Only 127.0.0.1 is used, every
wait is bounded and no server process is left.

The repository's own config is made slow on purpose (every batch waits up to 100 ms for 16
requests that two clients never send), so the swept setting (no wait) wins by a wide margin
on any machine, however loaded.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import servetune, tritonserver
from engine.servetune import Setting

if importlib.util.find_spec("pytriton") is None:
    pytest.skip('the server comes from nvidia-pytriton (pip install -e ".[serve]")',
                allow_module_level=True)
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
pytest.importorskip("tritonclient.grpc", reason="serve-tune reads configs with tritonclient[grpc]")

SUBJECT = "inception_resnet_v2_fmnist"
NAME = "subject"
SLOW = Setting(1, 16, 100_000, (16,))
SWEPT = ["--instances", "1", "--max-batch", "4", "--max-queue-delay-us", "0",
         "--concurrency", "2", "--requests", "30", "--seconds", "10"]
RUN_TIMEOUT_S = 400


def _server_processes():
    """Live server and stub processes (their command lines name the bundled server's files
    or a serve-tune scratch repository)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "inception-serve-tune-" in cmd and state != "Z":
            found.append((int(entry.name), cmd))
    return found


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    onnx_file = engine.export_onnx(engine.create_model(SUBJECT, weights="bundled"),
                                   root / "subject.onnx")
    repo = root / "repo"
    tritonserver.export_triton(onnx_file, repo, name=NAME, target="python",
                               max_batch=SLOW.max_batch, preferred_batch_sizes=SLOW.preferred,
                               max_queue_delay_us=SLOW.queue_delay_us)
    return repo, onnx_file


def _serve_tune(repo, *args):
    return subprocess.run([sys.executable, "-m", "engine", "serve-tune", str(repo), "--model",
                           NAME, *SWEPT, *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def test_a_target_no_point_meets_writes_nothing(repo):
    repo, _ = repo
    before = sorted(p.name for p in (repo / NAME).iterdir())
    old = (repo / NAME / "config.pbtxt").read_bytes()
    done = _serve_tune(repo, "--p99-ms", "0.001")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no point meets p99 <= 0.001 ms" in done.stderr and "nothing written" in done.stderr
    assert (repo / NAME / "config.pbtxt").read_bytes() == old
    assert sorted(p.name for p in (repo / NAME).iterdir()) == before
    assert _server_processes() == []


def test_sweep_writes_the_best_config_and_the_server_runs_it(repo, tmp_path):
    repo, onnx_file = repo
    old = (repo / NAME / "config.pbtxt").read_bytes()
    done = _serve_tune(repo, "--out", str(tmp_path / "sweep.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _server_processes() == []
    result = json.loads((tmp_path / "sweep.json").read_text())
    rows = result["rows"]
    assert [(r["current"], r["max_batch"], r["concurrency"]) for r in rows] == \
        [(True, 16, 2), (False, 4, 2)]
    assert all(r["failures"] == 0 and r["requests"] == 30 for r in rows)
    # the server saw every measured request and reports its own times beside the client's
    assert all(r["server_requests"] == 30 and r["compute_ms"] > 0 for r in rows)
    # the slow config's 100 ms batch wait is a floor on its queue time, whatever the load
    # (comparing it with the swept row's queue time would be a speed check, and load decides it)
    assert rows[0]["queue_ms"] >= 50
    assert result["chosen"]["max_batch"] == 4 and result["written"]
    assert result["versus_current"]["throughput_ratio"] > 1
    assert "chosen: 1 inst, max batch 4, delay 0 us" in done.stdout

    backups = sorted((repo / NAME).glob("config.pbtxt.*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == old
    new = servetune.read_config(repo / NAME)
    assert servetune.setting_of(new) == Setting(1, 4, 0)
    assert new == servetune.apply_setting(servetune.parse_config(old.decode()), Setting(1, 4, 0))

    x = np.random.default_rng(0).standard_normal((3, 3, 75, 75)).astype(np.float32)
    with engine.load(onnx_file) as rt:
        want = rt(x)
    with tritonserver.Server(repo, 0, 0, 0) as server:
        client = httpclient.InferenceServerClient(server.url)
        cfg = client.get_model_config(NAME)
        assert cfg["max_batch_size"] == 4
        assert int(cfg["dynamic_batching"].get("max_queue_delay_microseconds", 0)) == 0
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(NAME, [inp]).as_numpy("logits")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
