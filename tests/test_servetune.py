"""serve-tune without a server: the load generator's figures, the server's counters, the
sweep's grid, config rewriting, the selection rule, and the command's bad input.

The real server is driven by ``test_servetune_e2e.py``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine import cli, loadgen, servetune, tritonserver
from engine.errors import ArtifactError, InputError
from engine.servetune import Setting

pytest.importorskip("tritonclient.grpc", reason="serve-tune reads configs with tritonclient[grpc]")

IO = {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 3, 75, 75]}],
      "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 10]}]}


def _config_text(max_batch=16, preferred=(8, 16), delay=100, instances=1):
    """A config as serve-export writes it: labels, parameters and warm-up included."""
    return tritonserver.make_config("subject", "python", max_batch, IO, preferred, delay,
                                    instances, "KIND_CPU", label_file="labels.txt",
                                    parameters={"model_file": "model.onnx", "threads": "2"},
                                    warmup_batch_sizes=[1, max_batch])


# --------------------------------------------------------------------------- load generator
def test_summarize_percentiles_and_throughput():
    """1..100 ms: the percentiles interpolate between ranks (p50 50.5, p99 99.01); 100
    requests of 2 images in 4 s are 50 images/s."""
    s = loadgen.summarize([k / 1e3 for k in range(1, 101)], wall_s=4.0, images_per_request=2,
                          failures=3, first_error="boom")
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["throughput_ips"] == pytest.approx(50.0)
    assert (s["requests"], s["failures"], s["error"]) == (100, 3, "boom")


def test_summarize_with_nothing_answered():
    s = loadgen.summarize([], wall_s=1.0, images_per_request=1, failures=5, first_error="x")
    assert s["throughput_ips"] == 0.0 and s["p99_ms"] is None and s["failures"] == 5


METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="subject",version="1"} 87
nv_inference_request_success{model="subject",version="2"} 13
nv_inference_request_success{model="other",version="1"} 1000
nv_inference_request_failure{model="subject",reason="OTHER",version="1"} 1
nv_inference_request_failure{model="subject",reason="REJECTED",version="1"} 2
nv_inference_count{model="subject",version="1"} 100
nv_inference_exec_count{model="subject",version="1"} 25
nv_inference_queue_duration_us{model="subject",version="1"} 50000
nv_inference_compute_input_duration_us{model="subject",version="1"} 1000
nv_inference_compute_infer_duration_us{model="subject",version="1"} 398000
nv_inference_compute_output_duration_us{model="subject",version="1"} 1000
nv_gpu_utilization{gpu_uuid="GPU-0"} 0.5
"""


def test_parse_metrics_sums_versions_and_reasons_of_one_model():
    m = loadgen.parse_metrics(METRICS, "subject")
    assert m["nv_inference_request_success"] == 100
    assert m["nv_inference_request_failure"] == 3
    assert m["nv_inference_exec_count"] == 25
    assert loadgen.parse_metrics(METRICS, "absent") == dict.fromkeys(loadgen.COUNTERS, 0.0)


def test_server_side_means_per_request():
    after = loadgen.parse_metrics(METRICS, "subject")
    before = dict.fromkeys(loadgen.COUNTERS, 0.0)
    s = loadgen.server_side(before, after)
    assert s["queue_ms"] == pytest.approx(0.5)           # 50,000 us over 100 requests
    assert s["compute_ms"] == pytest.approx(4.0)         # (1,000 + 398,000 + 1,000) / 100
    assert s["mean_batch"] == pytest.approx(4.0)         # 100 inferences in 25 executions
    assert (s["server_requests"], s["server_failures"]) == (100, 3)
    idle = loadgen.server_side(after, after)
    assert idle["queue_ms"] is None and idle["mean_batch"] is None


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000",
                                 "127.0.0.2:1"])
def test_loopback_is_driven(url):
    assert loadgen.check_loopback(url) == url


@pytest.mark.parametrize("url", ["10.0.0.1:8000", "example.com:8000", "0.0.0.0:8000"])
def test_other_hosts_are_refused(url):
    with pytest.raises(InputError, match="this machine only"):
        loadgen.check_loopback(url)


def test_drive_refuses_before_connecting():
    with pytest.raises(InputError, match="this machine only"):
        loadgen.drive("192.168.1.1:8000", "m", [], 1, 1, 1.0)
    with pytest.raises(InputError, match="concurrency must be >= 1"):
        loadgen.drive("127.0.0.1:1", "m", [], 0, 1, 1.0)
    with pytest.raises(InputError, match="seconds must be > 0"):
        loadgen.drive("127.0.0.1:1", "m", [], 1, 1, 0.0)


def test_make_inputs_shapes_types_and_seed():
    spec = [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 5, 5]},
            {"name": "ids", "data_type": "TYPE_INT64", "dims": [4]}]
    a, b = loadgen.make_inputs(spec, batch=2, seed=1), loadgen.make_inputs(spec, batch=2, seed=1)
    assert [(n, w, x.shape, x.dtype) for n, w, x in a] == \
        [("input", "FP32", (2, 3, 5, 5), np.float32), ("ids", "INT64", (2, 4), np.int64)]
    assert all(np.array_equal(x, y) for (_, _, x), (_, _, y) in zip(a, b))
    with pytest.raises(InputError, match="variable dims"):
        loadgen.make_inputs([{"name": "x", "data_type": "TYPE_FP32", "dims": [3, -1]}])
    with pytest.raises(InputError, match="TYPE_STRING"):
        loadgen.make_inputs([{"name": "x", "data_type": "TYPE_STRING", "dims": [1]}])


# --------------------------------------------------------------------------- the grid
def test_grid_measures_max_batch_1_at_delay_0_only():
    g = servetune.grid([1, 2], [1, 4], [0, 500])
    assert g == [Setting(1, 1, 0), Setting(1, 4, 0), Setting(1, 4, 500),
                 Setting(2, 1, 0), Setting(2, 4, 0), Setting(2, 4, 500)]
    assert all(not s.preferred for s in g)


def test_grid_tries_preferred_sizes_only_on_request_and_within_max_batch():
    g = servetune.grid([1], [4, 8], [0], preferred=[4, 8])
    assert g == [Setting(1, 4, 0), Setting(1, 4, 0, (4,)), Setting(1, 8, 0),
                 Setting(1, 8, 0, (4, 8))]


@pytest.mark.parametrize("args, message", [
    (([0], [4], [0]), "instances values must be >= 1"),
    (([1], [0], [0]), "max batch values must be >= 1"),
    (([1], [4], [-5]), "queue delay values must be >= 0"),
    (([1], [4], []), "at least one value"),
])
def test_grid_bad_values(args, message):
    with pytest.raises(InputError, match=message):
        servetune.grid(*args)


# --------------------------------------------------------------------------- config rewriting
def _swept_fields_cleared(config):
    c = type(config)()
    c.CopyFrom(config)
    for f in ("max_batch_size", "dynamic_batching", "instance_group", "model_warmup"):
        c.ClearField(f)
    return c


def test_apply_setting_changes_only_the_swept_fields():
    old = servetune.parse_config(_config_text(max_batch=16, preferred=(8, 16), delay=100,
                                              instances=1))
    new = servetune.apply_setting(old, Setting(2, 4, 500))
    assert servetune.setting_of(new) == Setting(2, 4, 500)
    assert servetune.setting_of(old) == Setting(1, 16, 100, (8, 16))       # not changed
    assert _swept_fields_cleared(new) == _swept_fields_cleared(old)
    assert new.instance_group[0].kind == old.instance_group[0].kind
    # the warm-up of batch 16 is above the new max batch: dropped; batch 1 kept as it was
    assert [w.batch_size for w in new.model_warmup] == [1]
    assert new.model_warmup[0] == old.model_warmup[0]
    # the text round-trips
    again = servetune.parse_config(servetune.config_text(new))
    assert again == new
    assert {p: again.parameters[p].string_value for p in again.parameters} == \
        {p: old.parameters[p].string_value for p in old.parameters}


def test_apply_setting_sets_preferred_sizes_and_every_instance_group():
    old = servetune.parse_config(_config_text() + 'instance_group [ { count: 3 kind: KIND_CPU } ]')
    assert len(old.instance_group) == 2
    new = servetune.apply_setting(old, Setting(2, 8, 0, (4, 8)))
    assert [g.count for g in new.instance_group] == [2, 2]
    assert list(new.dynamic_batching.preferred_batch_size) == [4, 8]
    assert [w.batch_size for w in new.model_warmup] == [1]


def test_an_instance_group_without_a_count_runs_one_instance():
    """Triton runs one instance for a group that names no count (protobuf reads it as 0)."""
    text = _config_text(instances=1)
    assert "count: 1" in text
    c = servetune.parse_config(text.replace("count: 1", ""))
    assert len(c.instance_group) == 1 and c.instance_group[0].count == 0
    assert servetune.setting_of(c) == Setting(1, 16, 100, (8, 16))
    assert servetune.setting_of(servetune.parse_config(_config_text(instances=2))).instances == 2


def test_write_config_keeps_the_old_file_as_backup(tmp_path):
    mdir = tmp_path / "subject"
    mdir.mkdir()
    old = _config_text()
    (mdir / "config.pbtxt").write_text(old)
    new = servetune.config_text(servetune.apply_setting(servetune.parse_config(old),
                                                        Setting(1, 4, 0)))
    backup = servetune.write_config(mdir, new, stamp="20261203T000000Z")
    assert backup.name == "config.pbtxt.20261203T000000Z.bak"
    assert backup.read_bytes() == old.encode()
    assert (mdir / "config.pbtxt").read_text() == new
    # a second write in the same second keeps the first backup
    second = servetune.write_config(mdir, old, stamp="20261203T000000Z")
    assert second != backup and second.read_text() == new and backup.read_bytes() == old.encode()
    assert sorted(p.name for p in mdir.iterdir()) == \
        ["config.pbtxt", second.name, backup.name]


def test_read_config_bad_files(tmp_path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "config.pbtxt").write_text("max_batch_size: [ oops")
    with pytest.raises(ArtifactError, match="not a readable model config"):
        servetune.read_config(mdir)
    (mdir / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 0\n')
    with pytest.raises(InputError, match="max_batch_size is 0.*nothing to tune"):
        servetune.read_config(mdir)


def test_model_dir_names_the_models_there(tmp_path):
    with pytest.raises(ArtifactError, match="no such model repository"):
        servetune.model_dir(tmp_path / "absent", "m")
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(_config_text())
    (tmp_path / "notes").mkdir()
    with pytest.raises(InputError, match=r"no model 'gamma' .*models there: alpha, beta\)"):
        servetune.model_dir(tmp_path, "gamma")
    assert servetune.model_dir(tmp_path, "beta") == tmp_path / "beta"


# --------------------------------------------------------------------------- selection
def _point(inst, mb, delay, conc, ips, p99, failures=0, current=False, load_error=None):
    row = {"config": Setting(inst, mb, delay).label(), "current": current, "instances": inst,
           "max_batch": mb, "queue_delay_us": delay, "preferred": [], "concurrency": conc}
    if load_error:
        return {**row, "load_error": load_error}
    return {**row, "requests": 100, "failures": failures, "throughput_ips": ips, "p99_ms": p99}


ROWS = [_point(1, 16, 100, 1, 150.0, 9.0, current=True),
        _point(1, 16, 100, 8, 180.0, 80.0, current=True),
        _point(1, 4, 0, 1, 160.0, 8.0),
        _point(1, 4, 0, 4, 240.0, 25.0),
        _point(1, 4, 0, 8, 260.0, 45.0),
        _point(2, 8, 500, 8, 300.0, 60.0),
        _point(2, 8, 2000, 8, 400.0, 20.0, failures=1),      # fastest, but a request failed
        _point(2, 4, 0, 8, None, None, load_error="boom")]


def test_select_best_throughput_within_the_target():
    assert select_key(servetune.select(ROWS, 50.0)) == (1, 4, 0, 8)
    assert select_key(servetune.select(ROWS, 30.0)) == (1, 4, 0, 4)
    assert select_key(servetune.select(ROWS, 8.5)) == (1, 4, 0, 1)


def test_select_without_target_takes_the_best_throughput_that_answered_everything():
    assert select_key(servetune.select(ROWS)) == (2, 8, 500, 8)


def test_select_ties_go_to_lower_p99_then_the_cheaper_setting():
    rows = [_point(2, 8, 0, 4, 200.0, 20.0), _point(1, 8, 0, 4, 200.0, 20.0),
            _point(1, 8, 500, 4, 200.0, 19.0)]
    assert select_key(servetune.select(rows)) == (1, 8, 500, 4)
    assert select_key(servetune.select(rows[:2])) == (1, 8, 0, 4)


def test_select_target_no_point_meets():
    assert servetune.select(ROWS, 5.0) is None
    message = servetune._unmet(ROWS, 5.0)
    assert "no point meets p99 <= 5 ms: the lowest p99 was 8.00 ms" in message
    assert "nothing written" in message


def test_compare_with_the_current_config_at_the_same_concurrency():
    chosen = servetune.select(ROWS, 50.0)
    vs = servetune.compare(chosen, servetune.baseline_at(ROWS, chosen["concurrency"]))
    assert vs["throughput_ratio"] == pytest.approx(260.0 / 180.0)
    assert vs["p99_ratio"] == pytest.approx(45.0 / 80.0)


def select_key(row):
    return (row["instances"], row["max_batch"], row["queue_delay_us"], row["concurrency"])


def test_table_and_files(tmp_path):
    text = servetune.format_table(ROWS)
    assert text.count("\n") == len(ROWS) + 1 and "load failed: boom" in text
    result = {"rows": ROWS, "chosen": ROWS[3]}
    servetune.write_table(result, tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["rows"] == ROWS
    servetune.write_table(result, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert len(lines) == len(ROWS) + 1 and lines[0].startswith("config,current,instances")


# --------------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv, message", [
    (["--concurrency", "0"], "--concurrency: 0 is below the minimum 1"),
    (["--max-queue-delay-us", "-1"], "--max-queue-delay-us: -1 is below the minimum 0"),
    (["--instances", "0"], "--instances: 0 is below the minimum 1"),
    (["--max-batch", "two"], "--max-batch: 'two' is not an integer"),
    (["--seconds", "0"], "--seconds: 0 is outside (0.0, 3600.0]"),
    (["--p99-ms", "-3"], "--p99-ms: -3 is outside"),
    (["--requests", "0"], "--requests: 0 is below the minimum 1"),
    (["--timeout", "nan"], "--timeout: 'nan' is not a finite number"),
    (["--timeout", "inf"], "--timeout: 'inf' is not a finite number"),
    (["--seconds", "NaN"], "--seconds: 'NaN' is not a finite number"),
])
def test_cli_bad_numbers(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve-tune", str(tmp_path), "--model", "m", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_model_and_missing_repo(tmp_path, capsys):
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "config.pbtxt").write_text(_config_text())
    assert cli.main(["serve-tune", str(tmp_path), "--model", "beta"]) == 2
    err = capsys.readouterr().err
    assert "no model 'beta'" in err and "(models there: alpha)" in err
    assert cli.main(["serve-tune", str(tmp_path / "nope"), "--model", "alpha"]) == 2
    assert "no such model repository" in capsys.readouterr().err


def test_cli_refuses_an_encoded_model_before_the_server_starts(tmp_path, capsys, monkeypatch):
    """serve-tune sends the model's tensor input: an --input encoded entry is refused from its
    config, before any server process starts, pointing at a tensor export to tune."""
    from helpers import tiny_onnx

    def started(*a, **k):
        raise AssertionError("a server was started for an encoded model")
    monkeypatch.setattr(tritonserver.Server, "start", started)
    src = tiny_onnx(tmp_path / "m.onnx")
    assert cli.main(["serve-export", str(src), "--repo", str(tmp_path / "repo"), "--input",
                     "encoded", "--no-warmup"]) == 0
    capsys.readouterr()
    assert cli.main(["serve-tune", str(tmp_path / "repo"), "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert "this model takes encoded images" in err
    assert "serve-tune drives models with a tensor input" in err and "--input tensor" in err


def test_reload_on_a_server_that_does_not_answer(tmp_path):
    """A refused connection is that setting's load error; a server process that has exited
    is an EngineError quoting its log (no raw connection traceback either way)."""
    import subprocess
    import sys
    from helpers import tiny_onnx
    from engine.errors import EngineError
    d = tritonserver.export_triton(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "repo",
                                   target="onnxruntime_onnx", max_batch=8)
    run = servetune.Sweep(d, tmp_path / "work", timeout=5.0)     # not entered: no server
    run.server.ports["http"] = tritonserver.free_port()           # nothing listens there
    why = run.load(Setting(1, 8, 0))
    assert why.startswith(f"no answer from the server at {run.server.url}") and "refused" in why
    log = tmp_path / "server.log"
    log.write_text("I1203 starting\nE1203 model.cc:1] out of memory loading m\n")
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    run.server.process, run.server.log = dead, log
    try:
        with pytest.raises(EngineError, match=r"(?s)reloading 1 inst, max batch 8, delay 0 us: "
                           r"the Triton Inference Server exited with status 3:.*out of memory"):
            run.load(Setting(1, 8, 0))
    finally:
        run.server.process = None


def test_input_spec_feeds_the_load_generator():
    spec = servetune.input_spec(servetune.parse_config(_config_text()))
    assert spec == [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 75, 75]}]
    (name, wire, x), = loadgen.make_inputs(spec)
    assert (name, wire, x.shape) == ("input", "FP32", (1, 3, 75, 75))


def test_confirmed_takes_the_median_of_each_rounds_ratio():
    def fig(ips, p99, failures=0):
        return {"requests": 10, "failures": failures, "throughput_ips": ips, "p99_ms": p99}
    pairs = [{"concurrency": 8, "current": fig(100.0, 50.0), "chosen": fig(150.0, 40.0)},
             {"concurrency": 8, "current": fig(50.0, 100.0), "chosen": fig(150.0, 50.0)},
             {"concurrency": 8, "current": fig(100.0, 50.0), "chosen": fig(110.0, 45.0)},
             {"concurrency": 8, "current": fig(100.0, 50.0), "chosen": fig(900.0, 1.0, 1)}]
    c = servetune.confirmed(pairs)
    assert c["rounds"] == 3                               # the round with a failure is out
    assert c["throughput_ratio"] == pytest.approx(1.5)    # of 1.5, 3.0, 1.1
    assert c["p99_ratio"] == pytest.approx(0.8)           # of 0.8, 0.5, 0.9
    assert servetune.confirmed([]) is None


def test_per_concurrency_best_swept_setting_against_the_current_config():
    table = {c["concurrency"]: c for c in servetune.per_concurrency(ROWS, 50.0)}
    assert sorted(table) == [1, 4, 8]
    assert table[1]["best"] == Setting(1, 4, 0).label()
    assert table[1]["throughput_ratio"] == pytest.approx(160.0 / 150.0)
    assert table[4]["best"] == Setting(1, 4, 0).label() and "throughput_ratio" not in table[4]
    assert table[8]["best"] == Setting(1, 4, 0).label()          # 2x8x500 misses 50 ms
    assert table[8]["p99_ratio"] == pytest.approx(45.0 / 80.0)


def test_confirm_round_that_answered_nothing_prints_as_failed():
    """A confirmation round with no answered request has no p99: it prints as failed (the
    config is already written by then, so the report must not crash)."""
    from engine.commands.serve_tune import confirm_line
    good = loadgen.summarize([0.010] * 50 + [0.020] * 50, wall_s=2.0, images_per_request=1)
    none = loadgen.summarize([], wall_s=1.0, images_per_request=1, failures=4,
                             first_error="connection reset")
    line = confirm_line({"concurrency": 4, "current": good, "chosen": none})
    assert line == ("confirm @ 4: current 50.0 img/s p99 20.00 ms, chosen failed "
                    "(connection reset)")
    some = loadgen.summarize([0.010], wall_s=1.0, images_per_request=1, failures=2)
    assert confirm_line({"concurrency": 1, "current": none, "chosen": some}) == \
        "confirm @ 1: current failed (connection reset), chosen 1.0 img/s p99 10.00 ms, 2 failed"


def test_progress_total_counts_the_points_the_sweep_measures(tmp_path):
    """The current config (1 inst, max batch 16, delay 100, preferred 8,16) is measured once:
    a grid setting equal to it is not measured again, so it is not counted twice."""
    from engine.commands.serve_tune import points
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(_config_text())
    current = Setting(1, 16, 100, (8, 16))
    settings = servetune.grid([1, 2], [16], [100], preferred=[8, 16])
    assert current in settings and len(settings) == 4
    order = servetune.sweep_order(current, settings)
    assert order[0] == (current, True) and [s for s, _ in order].count(current) == 1
    assert points(tmp_path, "m", settings, [1, 2, 4]) == 4 * 3       # not (4 + 1) * 3
    other = servetune.grid([3], [4], [0])
    assert points(tmp_path, "m", other, [1, 2]) == 2 * 2
