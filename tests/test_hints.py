"""Throughput under OpenVINO's performance hints: the concurrent timing loop, the per-hint
measurement a deployment picks from, and `inception-engine bench`'s report of it."""
from __future__ import annotations

import json
import threading

import pytest

from engine.errors import InputError
from engine.timing import concurrent_rate
from helpers import tiny_onnx


def test_concurrent_rate_keeps_workers_busy_at_once():
    """Every call runs, and ``workers`` of them run at the same time: a barrier of that many
    parties would time out if the calls ran one after another."""
    barrier = threading.Barrier(3, timeout=10)
    calls = []

    def fn():
        calls.append(1)
        barrier.wait()

    out = concurrent_rate(fn, workers=3, calls=6, warmup=1)
    assert len(calls) == 9 and out["calls"] == 6 and out["workers"] == 3
    assert out["calls_per_s"] == pytest.approx(6 / out["seconds"])


@pytest.mark.parametrize("bad", [dict(workers=0, calls=1), dict(workers=1, calls=0),
                                 dict(workers=1, calls=1, warmup=-1)])
def test_concurrent_rate_rejects_bad_counts(bad):
    with pytest.raises(InputError):
        concurrent_rate(lambda: None, **bad)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("openvino")
    return tiny_onnx(tmp_path_factory.mktemp("hints") / "tiny.onnx")


def test_hint_throughput_measures_each_hint(onnx_file):
    from engine.backends.openvino import choose_hint, hint_throughput
    measured = hint_throughput(onnx_file, batch=2, threads=2, calls_per_request=2)
    assert set(measured) == {"latency", "throughput"}
    assert measured["latency"]["requests"] == 1 == measured["latency"]["streams"]
    tput = measured["throughput"]
    assert tput["requests"] >= tput["streams"] >= 1 and tput["calls"] == 2 * tput["requests"]
    hint, streams = choose_hint(measured)
    assert measured[hint]["images_per_s"] == max(m["images_per_s"] for m in measured.values())
    assert streams == measured[hint]["streams"]
    with pytest.raises(InputError, match="hints"):
        hint_throughput(onnx_file, hints=("fastest",))


def test_bench_reports_the_hints(onnx_file, capsys):
    from engine.cli import main
    assert main(["bench", str(onnx_file), "--batch", "2", "--iters", "2", "--warmup", "1",
                 "--threads", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["hints"]["2"]) == {"latency", "throughput"}
    assert main(["bench", str(onnx_file), "--batch", "2", "--iters", "2", "--warmup", "1",
                 "--hint", "throughput"]) == 0
    out = capsys.readouterr().out
    assert "THROUGHPUT" in out and "faster: THROUGHPUT" in out and "LATENCY " not in out
