"""The GPU run's dry run: ``OUT=DIR bash benchmarks/gpu_check.sh --dry-run`` on a CPU runs
every section of benchmarks/gpu_run.py on tiny shapes (kernels under the Triton interpreter)
and leaves the same three files the GPU run leaves, with a section cut by its budget."""
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["correctness", "e2e", "kernels", "aot"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TRITON_INTERPRET="1")
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    with tarfile.open(out / "gpu-run.tar.gz") as tar:
        tables = {Path(m.name).name: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    return out, summary, tables, p.stdout


def rows(tables, name):
    return list(csv.DictReader(io.StringIO(tables[name])))


def test_dry_run_leaves_three_files(dry_run):
    out, summary, tables, _ = dry_run
    assert sorted(os.listdir(out)) == ["gpu-run.tar.gz", "summary.json", "summary.md"]
    assert summary["dry_run"] and summary["environment"]["interpreter"]
    assert list(summary["sections"]) == SECTIONS
    for name in SECTIONS:
        assert f"{name}.log" in tables and f"{name}.json" in tables
    md = (out / "summary.md").read_text()
    assert "dry run on a CPU" in md
    for name in SECTIONS:
        status = summary["sections"][name]["status"]
        assert f"| {name} | {status} |" in md


def test_dry_run_correctness_checks_kernels_and_engine(dry_run):
    _, summary, tables, _ = dry_run
    sec = summary["sections"]["correctness"]
    assert sec["status"] == "ok", sec
    kern = rows(tables, "correctness_kernels.csv")
    assert {r["dtype"] for r in kern} == {"fp16", "int8"}
    assert all(r["passed"] == "True" for r in kern), kern
    shares = [float(r["flop_share"]) for r in kern]
    assert shares == sorted(shares, reverse=True)        # biggest FLOP share first
    eng = rows(tables, "correctness_engine.csv")
    got = {(r["model"], r["precision"]) for r in eng}
    assert got == {(m, p) for m in ("inception_resnet_v2_fmnist", "inception_resnet_v2")
                   for p in ("fp16", "int8")}
    # FP16 passes its parity criteria; INT8 of random weights on 4 random calibration
    # images is judged by nothing but running (the GPU run's trained subject is the check)
    assert all(r["passed"] == "True" for r in eng if r["precision"] == "fp16"), eng
    assert all(float(r["cosine_min"]) > 0.5 for r in eng), eng


def test_dry_run_end_to_end_has_every_runner_and_its_ratios(dry_run):
    _, summary, tables, _ = dry_run
    sec = summary["sections"]["e2e"]
    assert sec["status"] == "ok", sec
    e2e = rows(tables, "e2e.csv")
    for b in ("1", "2"):
        got = {r["runner"]: r for r in e2e if r["batch"] == b}
        assert set(got) == {"eager", "compile", "ours_fp16", "ours_int8"}
        base = float(got["eager"]["img_s"])
        for r in got.values():
            assert math.isclose(float(r["x_eager"]), float(r["img_s"]) / base, rel_tol=2e-3, abs_tol=2e-3)
        # a zero compile cap in the dry run: max-autotune is cut and the default mode runs
        assert got["compile"]["mode"].startswith("default (after: max-autotune over its")
    assert set(sec["targets"]["passed"]) == {"latency_vs_eager", "throughput_vs_compile",
                                             "int8_vs_fp16"}


def test_dry_run_cuts_the_kernel_section_at_its_budget(dry_run):
    """The dry run gives the kernels no time: each batch measures its first shape (the
    largest FLOP share), then the section stops and says where."""
    _, summary, tables, _ = dry_run
    sec = summary["sections"]["kernels"]
    assert sec["status"] == "cut" and sec["cut"].startswith("batch 1: 1 of ")
    kern = rows(tables, "kernels.csv")
    assert {r["batch"] for r in kern} == {"2", "1"}
    assert len({r["layer"] for r in kern}) == 1
    impls = {r["impl"] for r in kern}
    assert {"ours_fp16", "cudnn_bias_relu", "unfused_cat"} <= impls and "error" not in impls


def test_dry_run_calls_the_static_report(dry_run):
    _, summary, tables, _ = dry_run
    sec = summary["sections"]["aot"]
    assert sec["command"].startswith("-m kernels.aot --arch")
    assert "kernels.aot --arch 90 --report" in tables["aot.log"]
    assert sec["status"] in ("ok", "failed", "cut")          # recorded either way
    assert sec["status"] != "ok" or sec["report_written"]


def test_e2e_out_names_a_csv_or_a_folder(tmp_path):
    from benchmarks.e2e import output_paths, write_outputs
    assert output_paths(tmp_path / "x.csv") == (tmp_path / "x.csv", tmp_path / "x.json",
                                                tmp_path / "x.png")
    assert output_paths(tmp_path / "res") == (tmp_path / "res" / "e2e.csv",
                                              tmp_path / "res" / "e2e.json", tmp_path / "res" / "e2e.png")
    row = {"batch": 1, "label": "torch/fp32", "p50_ms": 2.5, "p90_ms": 3.0, "baseline": True,
           "latency_ratio": 1.0}
    result = {"model": "m", "size": 75, "threads": 1, "results": [row],
              "machine": {"cpu": "cpu", "loadavg_before": [1.0], "loadavg_after": [1.0]}}
    write_outputs(result, tmp_path / "x.csv")
    assert (tmp_path / "x.csv").is_file()
    assert (tmp_path / "x.csv").read_text().splitlines()[1].startswith("1,torch/fp32,,,2.5,")
    assert json.loads((tmp_path / "x.json").read_text()) == result
