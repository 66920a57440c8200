"""Triton Inference Server repository export, for ONNX and for plans (no TensorRT needed).

Every generated ``config.pbtxt`` is parsed with Triton's own ModelConfig protobuf schema
(``tritonclient.grpc.model_config_pb2``), so a field Triton does not know fails the test.
A real server loading these repositories is tests/test_tritonserver_e2e.py.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.backends.tensorrt import meta
from engine.errors import ArtifactError, InputError
from engine import tritonserver
from engine.errors import BackendUnavailableError
from engine.tritonserver import export_triton
from helpers import fake_sidecar, temp_files, tiny_onnx

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] gives the config schema")


def parse_config(path):
    from google.protobuf import text_format
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _all_temp(repo):
    return [p for d in [repo, *[q for q in repo.rglob("*") if q.is_dir()]]
            for p in temp_files(d)]


def test_onnx_repository(tmp_path):
    src = tiny_onnx(tmp_path / "irv2.onnx")
    repo = tmp_path / "repo"
    d = export_triton(src, repo, name="irv2_fmnist", max_batch=16, instances=2,
                      target="onnxruntime_onnx")
    assert d == repo / "irv2_fmnist"
    assert (d / "1" / "model.onnx").read_bytes() == src.read_bytes()
    cfg = parse_config(d / "config.pbtxt")
    mc = model_config_pb2
    assert cfg.name == "irv2_fmnist"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == \
        [("input", mc.TYPE_FP32, [3, 75, 75])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == \
        [("logits", mc.TYPE_FP32, [10])]
    assert cfg.output[0].label_filename == "labels.txt"
    labels = (d / "labels.txt").read_text().splitlines()
    assert labels[0] == "T-shirt/top" and len(labels) == 10
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in cfg.instance_group] == \
        [(2, mc.ModelInstanceGroup.KIND_AUTO)]
    assert _all_temp(repo) == []


def test_imagenet_labels_and_defaults(tmp_path):
    src = tiny_onnx(tmp_path / "irv2.onnx", config_name="inception_resnet_v2")
    d = export_triton(src, tmp_path / "repo", kind="cpu")
    cfg = parse_config(d / "config.pbtxt")
    assert d.name == "irv2" and cfg.name == "irv2"
    assert cfg.max_batch_size == 32
    assert list(cfg.input[0].dims) == [3, 299, 299] and list(cfg.output[0].dims) == [1000]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    labels = (d / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench"


def test_no_labels_for_foreign_onnx(tmp_path):
    import onnx
    src = tiny_onnx(tmp_path / "foreign.onnx")
    m = onnx.load(str(src))
    del m.metadata_props[:]
    onnx.save(m, str(src))
    d = export_triton(src, tmp_path / "repo")
    cfg = parse_config(d / "config.pbtxt")
    assert cfg.output[0].label_filename == ""
    assert not (d / "labels.txt").exists()


def test_plan_repository_from_sidecar(tmp_path):
    """A fake plan file with a sidecar: the I/O come from the sidecar, no TensorRT needed."""
    src = tiny_onnx(tmp_path / "irv2.onnx")
    plan = tmp_path / "irv2.plan"
    plan.write_bytes(b"serialized engine stand-in")
    side = fake_sidecar(plan, src, precision="fp16", max_batch=16, opt_batch=4)
    meta.write_plan_and_sidecar(plan, plan.read_bytes(),
                                lambda sha, n: dict(side, plan=dict(side["plan"], sha256=sha)))
    src.unlink()     # serve-export must not need the ONNX when the sidecar is there
    repo = tmp_path / "repo"
    d = export_triton(plan, repo, name="irv2_trt", version=3)
    cfg = parse_config(d / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 16        # the plan's profile maximum
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, 75, 75])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("logits", [10])]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert (d / "3" / "model.plan").read_bytes() == plan.read_bytes()
    copied = json.loads((d / "3" / "model.plan.json").read_text())
    assert copied["plan"]["file"] == "model.plan"
    assert copied["tensorrt"]["version"] == side["tensorrt"]["version"]
    assert (d / "labels.txt").exists()
    assert _all_temp(repo) == []
    with pytest.raises(InputError, match="exceeds the plan's optimization profile"):
        export_triton(plan, repo, max_batch=64)


def test_plan_fp16_io_maps_to_type_fp16(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    side = fake_sidecar(plan, src, keep_io_fp32=False)
    for t in side["io"]["inputs"] + side["io"]["outputs"]:
        t["dtype"] = "float16"
    meta.sidecar_path(plan).write_text(json.dumps(side))
    cfg = parse_config(export_triton(plan, tmp_path / "repo") / "config.pbtxt")
    assert cfg.input[0].data_type == cfg.output[0].data_type == model_config_pb2.TYPE_FP16


def test_plan_without_sidecar(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="no sidecar"):
        export_triton(plan, tmp_path / "repo")
    with pytest.warns(UserWarning, match="no sidecar"):
        d = export_triton(plan, tmp_path / "repo", onnx=src, max_batch=8)
    cfg = parse_config(d / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8


def test_bad_arguments(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="not usable as a Triton Inference Server model"):
        export_triton(src, tmp_path / "repo", name="a/b")
    with pytest.raises(InputError, match="outside 1..8"):
        export_triton(src, tmp_path / "repo", max_batch=8, preferred_batch_sizes=[4, 16])
    with pytest.raises(InputError, match="instances must be >= 1, got 0"):
        export_triton(src, tmp_path / "repo", instances=0)
    with pytest.raises(InputError, match="instance kind KIND_TPU is not one of"):
        export_triton(src, tmp_path / "repo", kind="tpu")
    with pytest.raises(ArtifactError, match="takes a .plan"):
        export_triton(tmp_path / "m.txt", tmp_path / "repo")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    meta.sidecar_path(plan).write_text(json.dumps(fake_sidecar(plan, src)))
    with pytest.raises(InputError, match="GPU only"):
        export_triton(plan, tmp_path / "repo", kind="KIND_CPU")


def test_cli(tmp_path, capsys):
    from engine.cli import main
    src = tiny_onnx(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    assert main(["serve-export", str(src), "--repo", str(repo), "--name", "m",
                 "--max-batch", "4", "--instances", "3", "--preferred", "2", "4",
                 "--max-queue-delay-us", "500", "--kind", "gpu", "--version", "2"]) == 0
    cfg = parse_config(repo / "m" / "config.pbtxt")
    assert (repo / "m" / "2" / "model.onnx").exists()
    assert cfg.max_batch_size == 4 and cfg.instance_group[0].count == 3
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert "tritonserver --model-repository" in capsys.readouterr().out
    assert main(["serve-export", str(tmp_path / "none.plan"), "--repo", str(repo)]) == 2
    assert "none.plan: no such file" in capsys.readouterr().err


def _params(cfg) -> dict:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def test_python_target_runs_our_runtime(tmp_path):
    """The Python-backend entry: model.py beside the ONNX, the engine choice, preprocessing
    and warm-up in the config."""
    src = tiny_onnx(tmp_path / "irv2.onnx")
    d = export_triton(src, tmp_path / "repo", target="python", max_batch=8,
                      preferred_batch_sizes=[2, 4], engine="onnxruntime", threads=2)
    cfg = parse_config(d / "config.pbtxt")
    assert cfg.backend == "python" and cfg.platform == ""
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (d / "1" / "model.onnx").read_bytes() == src.read_bytes()
    assert "class TritonPythonModel" in (d / "1" / "model.py").read_text()
    params = _params(cfg)
    assert (params["model_file"], params["engine"], params["threads"]) == \
        ("model.onnx", "onnxruntime", "2")
    assert json.loads(params["preprocess.input_size"]) == [3, 75, 75]
    assert json.loads(params["preprocess.mean"]) == [0.5, 0.5, 0.5]
    assert [(w.batch_size, list(w.inputs["input"].dims), w.inputs["input"].zero_data)
            for w in cfg.model_warmup] == [(1, [3, 75, 75], True), (4, [3, 75, 75], True)]
    assert cfg.output[0].label_filename == "labels.txt"
    assert _all_temp(tmp_path / "repo") == []
    cfg = parse_config(export_triton(src, tmp_path / "r2", target="python", warmup=False)
                       / "config.pbtxt")
    assert len(cfg.model_warmup) == 0 and _params(cfg)["engine"] == ""


def test_cpu_default_is_python(tmp_path, monkeypatch):
    import kernels.env
    src = tiny_onnx(tmp_path / "m.onnx")
    monkeypatch.setattr(kernels.env, "cuda_usable", lambda: False)
    assert parse_config(export_triton(src, tmp_path / "a") / "config.pbtxt").backend == "python"
    monkeypatch.setattr(kernels.env, "cuda_usable", lambda: True)
    assert parse_config(export_triton(src, tmp_path / "b") / "config.pbtxt").platform == \
        "onnxruntime_onnx"


def test_openvino_target_config(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    cfg = parse_config(export_triton(src, tmp_path / "repo", target="openvino") / "config.pbtxt")
    assert cfg.backend == "openvino" and cfg.default_model_filename == "model.onnx"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    assert "model_file" not in _params(cfg)
    assert not (tmp_path / "repo" / "m" / "1" / "model.py").exists()


def test_target_errors(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="target 'tflite' is not one of python, tensorrt_plan"):
        export_triton(src, tmp_path / "repo", target="tflite")
    with pytest.raises(InputError, match="target tensorrt_plan serves .plan files, not m.onnx"):
        export_triton(src, tmp_path / "repo", target="tensorrt_plan")
    with pytest.raises(InputError, match="apply to --target python only, not openvino"):
        export_triton(src, tmp_path / "repo", target="openvino", threads=2)
    with pytest.raises(InputError, match="threads must be an integer >= 1"):
        export_triton(src, tmp_path / "repo", target="python", threads=0)


def test_serve_without_pytriton(tmp_path, monkeypatch, capsys):
    """Without nvidia-pytriton, ``serve`` says how to install it and starts nothing."""
    from engine.cli import main
    real = tritonserver.importlib.util.find_spec
    monkeypatch.setattr(tritonserver.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(BackendUnavailableError, match=r'pip install -e "\.\[serve\]" && pip '
                       r"install --no-deps nvidia-pytriton==0\.7\.0"):
        tritonserver.bundled_server()
    (tmp_path / "repo").mkdir()
    scratch = set(Path(tempfile.gettempdir()).glob("inception-tritonserver-*"))
    assert main(["serve", str(tmp_path / "repo"), "--http-port", "0"]) == 2
    assert 'install it with pip install -e ".[serve]"' in capsys.readouterr().err
    assert set(Path(tempfile.gettempdir()).glob("inception-tritonserver-*")) == scratch, \
        "a failed start left its temporary backend directory"


def test_serve_bad_arguments(tmp_path, capsys):
    from engine.cli import main
    with pytest.raises(ArtifactError, match="no such model repository"):
        tritonserver.Server(tmp_path / "none")
    with pytest.raises(InputError, match="http port must be an integer in 0..65535"):
        tritonserver.Server(tmp_path, http_port=70000)
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert "no such model repository" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(tmp_path), "--grpc-port", "-1"])
    assert "below the minimum 0" in capsys.readouterr().err


def test_encoded_input_repository(tmp_path):
    """``--input encoded``: a ragged UINT8 ``image`` input, the limits as parameters, and a
    warm-up request reading a real PNG of the model's input size from ``warmup/``."""
    from PIL import Image
    src = tiny_onnx(tmp_path / "m.onnx")
    d = export_triton(src, tmp_path / "repo", target="python", input_kind="encoded",
                      max_image_bytes=1000, max_queue_size=6)
    cfg = parse_config(d / "config.pbtxt")
    mc = model_config_pb2
    assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch) for i in cfg.input] == \
        [("image", mc.TYPE_UINT8, [-1], True)]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("logits", [10])]
    params = _params(cfg)
    assert (params["input"], params["max_image_bytes"], params["max_image_pixels"]) == \
        ("encoded", "1000", "40000000")
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 6
    [warm] = cfg.model_warmup
    png = d / "warmup" / warm.inputs["image"].input_data_file
    assert (warm.batch_size, list(warm.inputs["image"].dims)) == (1, [png.stat().st_size])
    assert Image.open(png).size == (75, 75)
    assert _all_temp(tmp_path / "repo") == []
    plain = parse_config(export_triton(src, tmp_path / "r2", target="python") / "config.pbtxt")
    assert not plain.dynamic_batching.HasField("default_queue_policy")
    assert not plain.input[0].allow_ragged_batch


def test_encoded_input_errors(tmp_path):
    import onnx
    src = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="it needs --target python, not onnxruntime_onnx"):
        export_triton(src, tmp_path / "repo", target="onnxruntime_onnx", input_kind="encoded")
    import kernels.env
    with pytest.MonkeyPatch.context() as mp:     # on a GPU machine too, encoded means python
        mp.setattr(kernels.env, "cuda_usable", lambda: True)
        d = export_triton(src, tmp_path / "gpu", input_kind="encoded")
        assert parse_config(d / "config.pbtxt").backend == "python"
    with pytest.raises(InputError, match="input 'jpeg' is not one of tensor, encoded"):
        export_triton(src, tmp_path / "repo", target="python", input_kind="jpeg")
    with pytest.raises(InputError, match="max_image_pixels must be >= 1, got 0"):
        export_triton(src, tmp_path / "repo", target="python", input_kind="encoded",
                      max_image_pixels=0)
    with pytest.raises(InputError, match="max_queue_size must be >= 0"):
        export_triton(src, tmp_path / "repo", target="python", max_queue_size=-1)
    m = onnx.load(str(src))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ArtifactError, match="carries no model config, so the server cannot "
                       "preprocess images"):
        export_triton(tmp_path / "foreign.onnx", tmp_path / "repo", target="python",
                      input_kind="encoded")


@pytest.mark.parametrize("faster, instances, threads", [("throughput", 2, 2), ("latency", 1, 4)])
def test_measured_instances_deploy_the_faster_hints_streams(tmp_path, faster, instances,
                                                            threads):
    """The rule: the faster hint's streams become the instance count, the threads split
    between them (planted measurements, so the rule is checked, not this machine)."""
    seen = {}

    def measure(path, batch, threads):
        seen.update(path=path, batch=batch, threads=threads)
        rate = {"latency": 10.0, "throughput": 25.0}
        if faster == "latency":
            rate = {"latency": 25.0, "throughput": 10.0}
        return {"latency": {"images_per_s": rate["latency"], "streams": 1},
                "throughput": {"images_per_s": rate["throughput"], "streams": 2}}

    got = tritonserver.measured_instances(tmp_path / "m.onnx", batch=8, threads=4,
                                          measure=measure)
    assert (got["instances"], got["threads"], got["hint"]) == (instances, threads, faster)
    assert seen == {"path": tmp_path / "m.onnx", "batch": 8, "threads": 4}


def test_cli_instances_auto_measures_on_openvino(tmp_path, capsys):
    """``--instances auto`` on the real OpenVINO runtime: the config holds the count it
    printed, and each instance's threads; a target other than python is refused."""
    pytest.importorskip("openvino")
    from engine.cli import main
    src = tiny_onnx(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    assert main(["serve-export", str(src), "--repo", str(repo), "--name", "m",
                 "--target", "python", "--max-batch", "4", "--threads", "2",
                 "--instances", "auto"]) == 0
    out = capsys.readouterr().out
    assert "latency hint:" in out and "throughput hint:" in out
    cfg = parse_config(repo / "m" / "config.pbtxt")
    count = cfg.instance_group[0].count
    assert f"instances: {count} " in out and 1 <= count <= 2
    assert _params(cfg)["threads"] == str(max(1, 2 // count))
    assert main(["serve-export", str(src), "--repo", str(repo), "--name", "n",
                 "--target", "onnxruntime_onnx", "--instances", "auto"]) == 2
    assert "--instances auto times this package's OpenVINO runtime" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve-export", str(src), "--repo", str(repo), "--instances", "two"])
    assert "(or auto: measured on OpenVINO)" in capsys.readouterr().err
