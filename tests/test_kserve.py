"""``serve-export --kserve``: the InferenceService manifest, checked against the field list of
KServe's published CRD (``tests/data/kserve_inferenceservice_fields.json``, cut from
``config/crd/full/serving.kserve.io_inferenceservices.yaml`` of github.com/kserve/kserve at the
commit it names, by ``tests/data/make_kserve_fields.py``), since no cluster runs here; and the
repository served unchanged from a read-only mount by a real server.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import kserve, tritonserver
from engine.cli import main
from engine.errors import ArtifactError, InputError
from helpers import processes_mentioning, tiny_onnx

yaml = pytest.importorskip("yaml", reason="pyyaml reads the manifest (test extra)")
FIELDS = json.loads((Path(__file__).parent / "data" / "kserve_inferenceservice_fields.json")
                    .read_text())
_TYPES = {"object": dict, "string": str, "integer": int, "array": list, "boolean": bool}


def schema_errors(value, schema, where="") -> list:
    """Where ``value`` breaks the CRD's structural schema ``schema``: unknown fields, missing
    required ones, wrong types, values outside an enum."""
    errors = []
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{where}: {value!r} is neither an integer nor a string")
        return errors
    kind = schema.get("type")
    if kind in _TYPES and (not isinstance(value, _TYPES[kind]) or
                           (kind == "integer" and isinstance(value, bool))):
        return [f"{where}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties")
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}.{key}: required, missing")
        for key, child in value.items():
            if props is not None and key in props:
                errors += schema_errors(child, props[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(child, schema["additionalProperties"], f"{where}.{key}")
            elif props is not None:
                errors.append(f"{where}.{key}: no such field")
    return errors


@pytest.fixture
def entry(tmp_path):
    return tritonserver.export_triton(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "repo",
                                      name="irv2_fmnist", target="onnxruntime_onnx",
                                      max_batch=16)


def test_manifest_matches_the_crd(entry):
    m = kserve.inference_service(entry, "s3://bucket/models")
    src = FIELDS["source"]
    assert m["apiVersion"] == f"{src['group']}/{src['version']}" and m["kind"] == src["kind"]
    assert schema_errors(m, FIELDS["schema"]) == []
    assert m["metadata"]["name"] == "irv2-fmnist"
    model = m["spec"]["predictor"]["model"]
    assert (model["modelFormat"]["name"], model["storageUri"]) == ("triton", "s3://bucket/models")
    assert m["spec"]["predictor"]["scaleTarget"] == 16        # the model's max_batch_size
    gpu = kserve.inference_service(entry, "pvc://claim/models", gpus=1, image="reg/img:1")
    assert schema_errors(gpu, FIELDS["schema"]) == []
    assert gpu["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_gpu_instances_request_a_gpu(tmp_path, capsys):
    """An entry whose instances are KIND_GPU (a plan's default) fails to load on a pod without
    a GPU: its manifest asks for one unless told otherwise; a CPU entry asks for none."""
    gpu = tritonserver.export_triton(tiny_onnx(tmp_path / "g.onnx"), tmp_path / "repo",
                                     target="onnxruntime_onnx", kind="KIND_GPU")
    assert "kind: KIND_GPU" in (gpu / "config.pbtxt").read_text()
    res = kserve.inference_service(gpu, "s3://b/m")["spec"]["predictor"]["model"]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    res = kserve.inference_service(gpu, "s3://b/m", gpus=0)["spec"]["predictor"]["model"]
    assert "nvidia.com/gpu" not in res["resources"]["limits"]
    cpu = tritonserver.export_triton(tiny_onnx(tmp_path / "c.onnx"), tmp_path / "repo",
                                     target="onnxruntime_onnx", kind="KIND_CPU")
    res = kserve.inference_service(cpu, "s3://b/m")["spec"]["predictor"]["model"]["resources"]
    assert "nvidia.com/gpu" not in res["limits"]
    out = tmp_path / "isvc.yaml"
    assert main(["serve-export", str(tmp_path / "g.onnx"), "--repo", str(tmp_path / "r2"),
                 "--target", "onnxruntime_onnx", "--kind", "gpu", "--kserve", str(out),
                 "--storage-uri", "s3://b/m", "--kserve-gpus", "2"]) == 0
    m = yaml.safe_load(out.read_text())
    assert m["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert schema_errors(m, FIELDS["schema"]) == []


@pytest.mark.parametrize("path, value, message", [
    (("spec", "predictor", "model", "storageURI"), "s3://x", "model.storageURI: no such field"),
    (("spec", "predictor", "scaleMetric"), "queue_time", "is not one of"),
    (("spec", "predictor", "minReplicas"), "1", "is not integer"),
    (("spec", "predictor", "model", "modelFormat", "name"), None, "modelFormat.name: required"),
    (("spec", "predictor", "model", "resources", "limits", "cpu"), 1.5, "neither an integer"),
])
def test_the_check_catches_planted_faults(entry, path, value, message):
    m = kserve.inference_service(entry, "s3://bucket/models")
    node = m
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    assert any(message in e for e in schema_errors(m, FIELDS["schema"])), \
        schema_errors(m, FIELDS["schema"])


def test_manifest_errors(entry, tmp_path):
    with pytest.raises(InputError, match="storage URI 'models/' is not one"):
        kserve.inference_service(entry, "models/")
    with pytest.raises(ArtifactError, match="no config.pbtxt"):
        kserve.inference_service(tmp_path, "s3://b/m")
    with pytest.raises(InputError, match="max_replicas 1 is below min_replicas 2"):
        kserve.inference_service(entry, "s3://b/m", min_replicas=2, max_replicas=1)
    py = tritonserver.export_triton(tiny_onnx(tmp_path / "p.onnx"), tmp_path / "r2",
                                    target="python")
    with pytest.raises(InputError, match="give the image that has it installed"):
        kserve.inference_service(py, "s3://b/m")
    with pytest.raises(InputError, match="gives no valid Kubernetes name"):
        kserve.service_name("_")


def test_cli_writes_the_manifest(tmp_path, capsys):
    src = tiny_onnx(tmp_path / "m.onnx")
    out = tmp_path / "isvc.yaml"
    assert main(["serve-export", str(src), "--repo", str(tmp_path / "repo"), "--target",
                 "python", "--kserve", str(out), "--storage-uri", "gs://b/models",
                 "--kserve-image", "registry.example/inception-triton:24.10"]) == 0
    m = yaml.safe_load(out.read_text())
    assert m == kserve.inference_service(tmp_path / "repo" / "m", "gs://b/models",
                                         image="registry.example/inception-triton:24.10")
    assert schema_errors(m, FIELDS["schema"]) == []
    assert f"kubectl apply -f {out}" in capsys.readouterr().out
    assert main(["serve-export", str(src), "--repo", str(tmp_path / "r2"),
                 "--kserve", str(out)]) == 2
    assert "--kserve FILE and --storage-uri URI go together" in capsys.readouterr().err


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "-r", "sh", "-c", "mount --bind / /mnt 2>/dev/null "
                           "|| mount --bind /tmp /tmp"], capture_output=True).returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                    reason='the server comes from nvidia-pytriton (pip install -e ".[serve]")')
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -m -r (user + mount namespaces)")
def test_repository_serves_from_a_read_only_mount(tmp_path):
    """``serve`` inside a mount namespace where the repository is bind-mounted read-only
    (writing there fails, which the script checks first): the model loads and answers."""
    import tritonclient.http as httpclient
    repo = tmp_path / "repo"
    onnx_file = tiny_onnx(tmp_path / "m.onnx")
    tritonserver.export_triton(onnx_file, repo, target="python", warmup=False)
    port = tritonserver.free_port()
    script = (f'mount --bind "{repo}" "{repo}" && mount -o remount,bind,ro "{repo}" && '
              f'if touch "{repo}/m/probe" 2>/dev/null; then echo WRITABLE; exit 3; fi && '
              f'exec {sys.executable} -m engine serve "{repo}" --http-port {port} '
              f'--grpc-port {tritonserver.free_port()} --metrics-port {tritonserver.free_port()}')
    out = tmp_path / "serve.out"
    with open(out, "wb") as log:
        proc = subprocess.Popen(["unshare", "-m", "-r", "sh", "-c", script], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while b"Ctrl-C stops it" not in out.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.25)
        x = np.random.default_rng(0).standard_normal((2, 3, 75, 75)).astype(np.float32)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        import engine
        with engine.load(onnx_file) as rt:
            want = rt(x)
        np.testing.assert_allclose(http.infer("m", [inp]).as_numpy("logits"), want,
                                   atol=1e-5, rtol=0)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert not (repo / "m" / "probe").exists()
    assert not re.search(r"__pycache__", " ".join(str(p) for p in repo.rglob("*")))
    deadline = time.monotonic() + 15
    while processes_mentioning(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(repo)) == []


@pytest.mark.parametrize("extra, message", [
    (["--target", "python", "--instances", "auto"], "give the image that has it installed"),
    (["--target", "onnxruntime_onnx", "--name", "_"], "gives no valid Kubernetes name"),
    (["--target", "onnxruntime_onnx", "--storage-uri", "models/"], "storage URI 'models/'"),
])
def test_cli_checks_the_manifest_inputs_before_writing(tmp_path, capsys, monkeypatch, extra,
                                                       message):
    """A manifest input that would be refused stops serve-export before the --instances auto
    timing and before the repository entry is written."""
    def timed(*a, **k):
        raise AssertionError("the model was timed before the manifest inputs were checked")
    monkeypatch.setattr(tritonserver, "measured_instances", timed)
    src = tiny_onnx(tmp_path / "m.onnx")
    uri = [] if "--storage-uri" in extra else ["--storage-uri", "s3://b/m"]
    assert main(["serve-export", str(src), "--repo", str(tmp_path / "repo"), "--kserve",
                 str(tmp_path / "isvc.yaml")] + uri + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists() and not (tmp_path / "isvc.yaml").exists()
