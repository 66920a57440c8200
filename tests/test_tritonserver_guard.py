"""``inception-engine serve`` never leaves the Triton Inference Server behind: SIGKILL the
``serve`` process and its guard ends the server, its Python-backend stubs and their
``/dev/shm`` regions, and frees the ports; a port already in use is refused up front, naming
the process that holds it.

Only 127.0.0.1 ports are used and every wait is bounded.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import tritonserver
from engine.cli import main
from engine.errors import InputError
from engine.tritonguard import port_holder
from helpers import port_is_free, processes_mentioning, tiny_onnx

needs_server = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                  reason='the server comes from nvidia-pytriton '
                                         '(pip install -e ".[serve]")')
START_TIMEOUT_S = 120
GONE_WITHIN_S = 15


def _shm_regions(serve_pid: int):
    return sorted(Path("/dev/shm").glob(f"{tritonserver.SHM_PREFIX}{serve_pid}_*"))


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def listening():
    """A socket listening on a free 127.0.0.1 port, held by this test process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_port_holder_names_the_listener(listening):
    assert port_holder(listening)[0] == os.getpid()
    assert port_holder(tritonserver.free_port()) is None


@needs_server
def test_port_in_use_is_refused_with_its_holder(tmp_path, listening, capsys):
    """Before anything starts: the port, its role, and this test's PID and command line."""
    (tmp_path / "repo").mkdir()
    with pytest.raises(InputError, match=rf"grpc port {listening} on 127\.0\.0\.1 is in use "
                       rf"\(.*\) by process {os.getpid()} \(.*python.*\); stop it, or pick "
                       r"another port with --grpc-port"):
        tritonserver.Server(tmp_path / "repo", 0, listening, 0).start()
    assert main(["serve", str(tmp_path / "repo"), "--http-port", str(listening)]) == 2
    err = capsys.readouterr().err
    assert f"http port {listening} on 127.0.0.1 is in use" in err
    assert f"by process {os.getpid()}" in err


@needs_server
def test_sigkill_of_serve_leaves_no_server(tmp_path):
    """SIGKILL ``serve`` (no handler runs): within a few seconds no process names the
    repository, the stubs' shared memory is unlinked and all three ports are free."""
    repo = tmp_path / "repo"
    tritonserver.export_triton(tiny_onnx(tmp_path / "m.onnx"), repo, target="python",
                               warmup=False, instances=2)
    ports = [tritonserver.free_port() for _ in range(3)]
    out = tmp_path / "serve.out"
    with open(out, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(repo),
                                 "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                                 "--metrics-port", str(ports[2]),
                                 "--timeout", str(START_TIMEOUT_S)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: b"Ctrl-C stops it" in out.read_bytes() or
                         proc.poll() is not None, START_TIMEOUT_S + 30), out.read_text()
        assert proc.poll() is None, out.read_text()
        running = processes_mentioning(str(repo))
        # the server and one stub per instance
        assert len(running) >= 3, running
        assert _shm_regions(proc.pid), "no shared-memory region carries serve's prefix"
        assert not any(port_is_free(p) for p in ports)
        proc.kill()
        proc.wait(timeout=10)
        assert _wait_for(lambda: not processes_mentioning(str(repo)), GONE_WITHIN_S), \
            processes_mentioning(str(repo))
        assert _wait_for(lambda: not _shm_regions(proc.pid), GONE_WITHIN_S), \
            _shm_regions(proc.pid)
        assert all(port_is_free(p) for p in ports)
        # the guard exits after its clean-up, so it may outlast the regions by a moment
        guard = f"engine.tritonguard {tritonserver.SHM_PREFIX}{proc.pid}_"
        assert _wait_for(lambda: not processes_mentioning(guard), GONE_WITHIN_S), \
            "the guard outlived its work"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pid, _ in processes_mentioning(str(repo)):
            os.kill(pid, 9)
