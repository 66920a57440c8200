"""The study on a real multi-node Ray cluster on this machine (tests/ray_study_child.py,
run inside a network namespace of its own): the same rows as the local executor image by
image, OpenVINO's accuracy computed on each CPU class and the others' once, a worker node
lost in the middle, a rerun that skips every finished trial, a resume that reuses only the
shared predictions, and one speed table per CPU class."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason='the Ray executor needs pip install -e ".[cluster]"')
ROOT = Path(__file__).resolve().parents[1]
ACCURACY = ("engine", "precision", "quantizer", "method", "target", "top1", "agreement",
            "losses", "gains", "top1_delta_ci", "within_noise")


def _namespace_works() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                           capture_output=True)
    return probe.returncode == 0


def _ours(marker: str) -> list:
    """The processes still running whose command line names our Ray temp folder."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [p for p in found.stdout.split() if int(p) != os.getpid()]


def _rows(folder: Path):
    rows = json.loads((folder / "results.json").read_text())
    with np.load(folder / "predictions.npz") as z:
        preds = {k: z[k] for k in z.files}
    return rows, preds


def _accuracy(rows, preds, cpu_class=None):
    """Each row's accuracy columns and its prediction per image, keyed by what it measures."""
    return {(r["engine"], r["precision"], r["quantizer"], r["method"], r["target"]):
            ({c: r.get(c) for c in ACCURACY}, preds[r["predictions"]].tolist())
            for r in rows if cpu_class is None or r["cpu_class"] == cpu_class}


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    if not _namespace_works():
        pytest.skip("needs `unshare -n` and `ip` (root, or user namespaces) to keep Ray on "
                    "a loopback-only network")
    out = tmp_path_factory.mktemp("ray-study")
    # short: Ray puts sockets under it; unique: names only this test's processes
    temp_dir = tempfile.mkdtemp(prefix=f"rs{uuid.uuid4().hex[:6]}", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": temp_dir}
    child = (f"ip link set lo up && exec {sys.executable} {ROOT / 'tests/ray_study_child.py'} "
             f"{out} {temp_dir}")
    try:
        done = subprocess.run(["unshare", "-n", "sh", "-c", child], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    finally:
        left = _ours(temp_dir)
        for pid in left:                     # never leave a process behind, even on failure
            subprocess.run(["kill", "-9", pid], capture_output=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"Ray processes left after the cluster was shut down: {left}"
    return out


def test_ray_rows_equal_the_local_rows_image_by_image(cluster_run):
    local = _accuracy(*_rows(cluster_run / "local"))
    rows, preds = _rows(cluster_run / "ray")
    classes = list(dict.fromkeys(r["cpu_class"] for r in rows))
    assert len(classes) == 2 and "other" in classes
    for cpu_class in classes:
        assert _accuracy(rows, preds, cpu_class) == local
    assert all(r["latency_ms"] and r["latency_ms"] > 0 for r in rows), \
        [r["note"] for r in rows]


def _trial(r) -> tuple:
    return (r["engine"], r["precision"], r["quantizer"], r["method"], r["target"])


def _prediction_sets(log: str) -> tuple:
    """(prediction sets, of them per CPU class) from the Ray executor's log line."""
    import re
    found = re.search(r"ray: \d+ trials, (\d+) prediction sets of \d+ shards \((\d+) of "
                      r"them per CPU class\)", log)
    assert found, log
    return int(found[1]), int(found[2])


def test_openvino_accuracy_is_computed_on_each_class_the_others_once(cluster_run):
    rows, preds = _rows(cluster_run / "ray")
    classes = list(dict.fromkeys(r["cpu_class"] for r in rows))
    ov = [r for r in rows if r["engine"] == "openvino"]
    assert {(r["precision"], r["cpu_class"]) for r in ov} >= {("int8", c) for c in classes}
    for r in ov:                        # each class's OpenVINO rows came from its own nodes
        assert r["accuracy_classes"] == [r["cpu_class"]], r
    shared = [r for r in rows if r["engine"] != "openvino"]
    for trial in dict.fromkeys(_trial(r) for r in shared):
        mine = [r for r in shared if _trial(r) == trial]
        assert [r["cpu_class"] for r in mine] == classes
        # one prediction set, wherever it ran, in both classes' rows
        assert len({tuple(r["accuracy_classes"]) for r in mine}) == 1, mine
        assert set(mine[0]["accuracy_classes"]) <= set(classes) and mine[0]["accuracy_classes"]
        assert all(np.array_equal(preds[r["predictions"]], preds[mine[0]["predictions"]])
                   for r in mine)
    n_ov = len({_trial(r) for r in ov})
    n_shared = len({_trial(r) for r in shared})
    assert _prediction_sets((cluster_run / "ray.log").read_text()) == \
        (n_shared + n_ov * len(classes), n_ov * len(classes))
    killed, _ = _rows(cluster_run / "ray-killed")   # a shard whose node died stayed in class
    assert all(r["accuracy_classes"] == [r["cpu_class"]] for r in killed
               if r["engine"] == "openvino"), killed


def test_a_resume_reuses_shared_predictions_but_not_openvino_ones(cluster_run):
    before, before_preds = _rows(cluster_run / "ray-killed")
    rows, preds = _rows(cluster_run / "ray-resumed")
    log = (cluster_run / "ray-resumed.log").read_text()
    others = [r for r in before if r["cpu_class"] == "other"]
    assert f"skipped {len(before) - len(others)} of {len(before)} trials" in log
    n_ov = len({_trial(r) for r in others if r["engine"] == "openvino"})
    assert n_ov >= 2 and _prediction_sets(log) == (n_ov, n_ov)   # only OpenVINO's computed
    first = next(r["cpu_class"] for r in before if r["cpu_class"] != "other")
    stored = {_trial(r): r for r in before if r["cpu_class"] == first}
    for r in rows:
        if r["cpu_class"] != "other":
            continue
        if r["engine"] == "openvino":
            assert r["accuracy_classes"] == ["other"], r
        else:                           # the other class's stored row's predictions
            assert r["accuracy_classes"] == stored[_trial(r)]["accuracy_classes"]
            assert np.array_equal(preds[r["predictions"]],
                                  before_preds[stored[_trial(r)]["predictions"]])
    for cpu_class in (first, "other"):
        assert _accuracy(rows, preds, cpu_class) == _accuracy(before, before_preds, cpu_class)


def test_a_worker_node_lost_mid_study_gives_the_same_rows(cluster_run):
    events = json.loads((cluster_run / "killed-events.json").read_text())
    assert len(events) > 1                   # the node went after the first finished trial
    killed, preds = _rows(cluster_run / "ray-killed")
    rows, ray_preds = _rows(cluster_run / "ray")
    assert [(r["cpu_class"], r["engine"], r["precision"], r["method"]) for r in killed] == \
        [(r["cpu_class"], r["engine"], r["precision"], r["method"]) for r in rows]
    for cpu_class in dict.fromkeys(r["cpu_class"] for r in rows):
        assert _accuracy(killed, preds, cpu_class) == _accuracy(rows, ray_preds, cpu_class)
    assert not any(r["note"].startswith("failed") for r in killed), [r["note"] for r in killed]


def test_a_rerun_on_the_cluster_skips_every_finished_trial(cluster_run):
    rows, _ = _rows(cluster_run / "ray")
    log = (cluster_run / "ray-rerun.log").read_text()
    assert f"skipped {len(rows)} of {len(rows)} trials finished before" in log
    assert "ray:" not in log                 # nothing was sent to the cluster
    assert json.loads((cluster_run / "ray-first.json").read_text()) == rows   # same report


def test_the_report_has_one_speed_table_and_pareto_panel_per_cpu_class(cluster_run):
    report = (cluster_run / "ray" / "report.md").read_text()
    classes = json.loads((cluster_run / "classes.json").read_text())
    assert len(classes) == 2
    for c in classes:
        assert report.count(f"## CPU class: {c['name']} (") == 1
    assert report.count("| engine | precision |") == 2
    assert "Accuracy per CPU class: the openvino rows' predictions depend on the CPU" in report
    from engine.study import pareto_figure
    rows, _ = _rows(cluster_run / "ray")
    titles = [ax.get_title() for ax in pareto_figure(rows).axes if ax.get_title()]
    assert sorted(t.split("\non ")[1] for t in titles) == sorted(c["name"] for c in classes)
    local = (cluster_run / "local" / "report.md").read_text()
    assert "## CPU class" not in local and local.count("| engine | precision |") == 1


def test_a_trial_that_keeps_failing_is_a_row_carrying_the_error(cluster_run):
    rows = json.loads((cluster_run / "failing.json").read_text())
    assert len(rows) == 4                     # two trials on each of the two classes
    for r in rows:
        if r["engine"] == "torch":
            assert r["top1"] is not None and not r["note"].startswith("failed")
        else:
            assert r["top1"] is None and r["note"].startswith("failed: "), r


def test_no_cluster_at_the_address_is_a_clear_error(tmp_path):
    if not _namespace_works():
        pytest.skip("needs `unshare -n` and `ip`")
    code = ("from engine.study.ray_executor import RayExecutor\n"
            "from engine.errors import InputError\n"
            "try:\n    RayExecutor('auto').classes()\n"
            "except InputError as e:\n    print('InputError:', e)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path),
           "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(["unshare", "-n", "sh", "-c",
                           f"ip link set lo up && exec {sys.executable} -c \"{code}\""],
                          env=env, capture_output=True, text=True, timeout=120)
    assert "InputError: --ray auto: no Ray cluster there" in done.stdout, done.stderr[-2000:]
    assert "ray start --head" in done.stdout
