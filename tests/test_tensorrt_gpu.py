"""TensorRT for real: build FP32/FP16/INT8 plans of IR-v2 and check them against PyTorch.

Marked ``tensorrt``; skipped unless ``import tensorrt`` works and a CUDA GPU is visible (run
them on a GPU machine: ``pytest -m tensorrt``). The subject is the trained width-0.25 75x75
IR-v2 on Fashion-MNIST (``weights="bundled"``) with the shipped test set, the study's data:

- FP32: ``engine.verify`` passes at FP32 tolerance;
- FP16: top-1 agreement with the PyTorch reference >= 99.5% over the 10,000 test images;
- INT8 (Q/DQ from ``calibration.quantize``, entropy, the shipped calibration split): test
  accuracy within 0.5 points of the FP32 plan's.
"""
from __future__ import annotations

import importlib.util
import json
import threading
import warnings

import numpy as np
import pytest

import engine
from engine.errors import UnsupportedPrecisionError
from kernels.env import cuda_usable

pytestmark = pytest.mark.tensorrt

FMNIST = "inception_resnet_v2_fmnist"


def _gpu_ready():
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT is not installed"
    if not cuda_usable():
        return False, "no CUDA GPU (or torch without CUDA)"
    return True, ""


_ok, _why = _gpu_ready()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

import torch  # noqa: E402
import tensorrt as trt  # noqa: E402

from engine.backends.tensorrt import meta  # noqa: E402
from engine.backends.tensorrt import TensorRTRuntime, build  # noqa: E402


# --------------------------------------------------------------------------- data and models
@pytest.fixture(scope="module")
def subject():
    """The trained study subject (PyTorch, on the GPU). Its checkpoint ships in engine/data,
    so a WeightsError here is a broken checkpoint or loader: it fails, it is not a skip."""
    return engine.create_model(FMNIST, weights="bundled").cuda().eval()


@pytest.fixture(scope="module")
def test_set(subject):
    from engine.datasets import fashion_mnist, to_model_input
    images, labels = fashion_mnist("test")
    x = torch.cat([to_model_input(images[i:i + 1000], subject.config)
                   for i in range(0, len(images), 1000)])
    return x.contiguous(), np.asarray(labels, dtype=np.int64)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("trt")


@pytest.fixture(scope="module")
def fp32_onnx(subject, workdir):
    path = workdir / "subject.onnx"
    engine.export_onnx(subject, path)          # exports a CPU copy
    return path


@pytest.fixture(scope="module")
def int8_onnx(fp32_onnx, workdir, subject):
    import calibration
    from engine.datasets import fashion_mnist, to_model_input
    images, _ = fashion_mnist("calib")
    batches = [to_model_input(images[i:i + 64], subject.config).numpy()
               for i in range(0, len(images), 64)]
    out = workdir / "subject.int8.onnx"
    calibration.quantize(fp32_onnx, out, data=batches, method="entropy")
    return out


@pytest.fixture(scope="module")
def plans(fp32_onnx, workdir):
    cache = workdir / "timing.cache"
    made = {}
    for p in ("fp32", "fp16"):
        made[p] = build(fp32_onnx, workdir / f"subject.{p}.plan", precision=p, min_batch=1,
                        opt_batch=32, max_batch=64, timing_cache=cache)
    return made


def logits_of(fn, x, batch=64):
    return torch.cat([torch.as_tensor(fn(x[i:i + batch])).cuda().float()
                      for i in range(0, len(x), batch)])


@pytest.fixture(scope="module")
def reference_logits(subject, test_set):
    x, _ = test_set
    with torch.no_grad():
        return logits_of(lambda b: subject(b.cuda()), x)


# --------------------------------------------------------------------------- builds
def test_sidecar_records_the_real_environment(plans, fp32_onnx, workdir):
    side = meta.read_sidecar(plans["fp16"], required=True)
    assert side["tensorrt"]["version"] == trt.__version__
    assert side["gpu"]["name"] == torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    assert side["gpu"]["compute_capability"] == f"{major}.{minor}"
    assert side["precision"] == "fp16"
    assert side["build_options"]["max_batch"] == 64
    from engine.fileio import sha256_file
    assert side["plan"]["sha256"] == sha256_file(plans["fp16"])
    assert side["source_onnx"]["sha256"] == sha256_file(fp32_onnx)
    assert (workdir / "timing.cache").stat().st_size > 0


def test_trtexec_level_options(fp32_onnx, workdir, capsys):
    """Optimization level 0 and the layer information a real engine gives, then bench's
    trtexec summary with the GPU compute time measured by CUDA events."""
    from engine.cli import main
    info = workdir / "layers.json"
    plan = build(fp32_onnx, workdir / "subject.level0.plan", precision="fp32", max_batch=8,
                 builder_optimization_level=0, layer_info=info, workspace=1 << 30)
    layers = json.loads(info.read_text())
    assert isinstance(layers, dict) and len(layers["Layers"]) > 10
    assert meta.read_sidecar(plan)["build_options"]["builder_optimization_level"] == 0
    assert main(["bench", str(plan), "--batch", "8", "--iters", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["results"][0]
    gpu, host = report["gpu_compute"], report["host_latency"]
    assert gpu is not None and 0 < gpu["p50_ms"] <= host["p50_ms"] * 1.5


def cpu_reference():
    """A fresh CPU copy of the subject for engine.verify (which runs its reference on CPU)."""
    return engine.create_model(FMNIST, weights="bundled")


def test_fp32_plan_matches_pytorch(plans, subject, test_set):
    x, _ = test_set
    with engine.load(plans["fp32"]) as rt:
        assert rt.backend == "tensorrt" and rt.precision == "fp32"
        assert rt.config == subject.config
        report = engine.verify(rt, cpu_reference(), x[:512].cpu().numpy(), batch_size=64,
                               localize=False)
    assert report.passed, str(report)


def test_fp16_plan_top1_agreement(plans, reference_logits, test_set):
    x, _ = test_set
    with engine.load(plans["fp16"]) as rt:
        out = logits_of(rt, x)
    agree = (out.argmax(1) == reference_logits.argmax(1)).float().mean().item()
    assert agree >= 0.995, f"FP16 top-1 agreement {agree:.4%} < 99.5%"
    with engine.load(plans["fp16"]) as rt:
        report = engine.verify(rt, cpu_reference(), x[:256].cpu().numpy(), batch_size=64,
                               localize=False)
    assert report.passed, str(report)


def test_int8_plan_accuracy_within_half_a_point(plans, int8_onnx, workdir, test_set):
    x, labels = test_set
    plan = build(int8_onnx, workdir / "subject.int8.plan", opt_batch=32, max_batch=64)
    side = meta.read_sidecar(plan, required=True)
    assert side["precision"] == "int8"
    assert side["calibration"]["method"] == "entropy"
    accs = {}
    for name, p in (("fp32", plans["fp32"]), ("int8", plan)):
        with engine.load(p) as rt:
            pred = logits_of(rt, x).argmax(1).cpu().numpy()
        accs[name] = 100.0 * float((pred == labels).mean())
    assert accs["fp32"] - accs["int8"] <= 0.5, f"INT8 loses too much top-1: {accs}"


def test_int8_needs_qdq(fp32_onnx, workdir):
    with pytest.raises(UnsupportedPrecisionError, match="inception-engine quantize"):
        build(fp32_onnx, workdir / "no.plan", precision="int8")


# --------------------------------------------------------------------------- runtime
def test_numpy_torch_cpu_and_cuda_inputs(plans, test_set):
    x = test_set[0][:8]
    with engine.load(plans["fp32"]) as rt:
        a = rt(x.cpu().numpy())
        b = rt(x.cpu())
        c = rt(x.cuda())
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        assert isinstance(b, torch.Tensor) and b.device.type == "cpu"
        assert isinstance(c, torch.Tensor) and c.is_cuda and c.dtype == torch.float32
        np.testing.assert_allclose(b.numpy(), a, rtol=0, atol=0)
        np.testing.assert_allclose(c.cpu().numpy(), a, rtol=1e-6, atol=1e-6)
        # batch outside the profile: a clear error with the rebuild command, on either path
        for zeros in (torch.zeros(65, 3, 75, 75), torch.zeros(65, 3, 75, 75, device="cuda")):
            with pytest.raises(engine.InputError, match="outside this plan's optimization profile"):
                rt(zeros)
        # a CUDA tensor is checked by the base class on the GPU, before TensorRT runs
        bad = x.cuda().clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(engine.InputError, match="1 NaN"):
            rt(bad)
        with pytest.raises(engine.InputError, match="not floating point"):
            rt(x.cuda().to(torch.int32))


def test_cuda_graph_replay(plans, test_set):
    x = test_set[0][:16].cuda()
    with engine.load(plans["fp16"]) as plain, \
            TensorRTRuntime(plans["fp16"], cuda_graph=True) as graphed:
        want = plain(x)
        for _ in range(3):                       # capture once, then replay
            torch.testing.assert_close(graphed(x), want, rtol=0, atol=0)
        torch.testing.assert_close(graphed(x[:4]), plain(x[:4]), rtol=0, atol=0)  # recapture


def test_threads_get_their_own_context(plans, test_set):
    x = test_set[0][:32]
    with engine.load(plans["fp32"]) as rt:
        want = rt(x.cpu().numpy())
        results, errors = {}, []

        def work(i):
            try:
                for _ in range(5):
                    results[i] = rt(x.cpu().numpy() if i % 2 else x.cuda())
            except Exception as e:   # reported below
                errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i, r in results.items():
            r = r.cpu().numpy() if isinstance(r, torch.Tensor) else r
            np.testing.assert_allclose(r, want, rtol=1e-6, atol=1e-6)


def test_mismatched_sidecar_refuses_to_load(plans, workdir):
    import shutil
    plan = workdir / "copy.plan"
    shutil.copyfile(plans["fp32"], plan)
    side = json.loads(meta.sidecar_path(plans["fp32"]).read_text())
    side["plan"]["file"] = "copy.plan"
    side["tensorrt"]["version"] = "0.0.1"
    meta.sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(meta.PlanMismatchError, match=f"TensorRT 0.0.1.*TensorRT {trt.__version__}"):
        engine.load(plan)
    with pytest.warns(UserWarning, match="cannot run here"):
        TensorRTRuntime(plan, check_env=False).close()


def test_raw_plan_without_sidecar_loads(plans, workdir, test_set):
    import shutil
    plan = workdir / "raw.plan"
    shutil.copyfile(plans["fp32"], plan)
    with pytest.warns(UserWarning, match="no sidecar"):
        rt = TensorRTRuntime(plan)
    with rt:
        assert rt.config is None
        assert rt(test_set[0][:2].cpu().numpy()).shape == (2, 10)


def test_parser_error_names_the_node(workdir):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("NoSuchOp", ["input"], ["logits"], name="/custom/NoSuchOp",
                            domain="example.custom")
    g = helper.make_graph([node], "bad",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("example.custom", 1)])
    path = workdir / "bad.onnx"
    onnx.save(m, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(engine.UnsupportedGraphError, match="/custom/NoSuchOp"):
            build(path, workdir / "bad.plan")
    assert not (workdir / "bad.plan").exists()


def test_serve_export_of_a_real_plan(plans, workdir):
    from engine.tritonserver import export_triton
    d = export_triton(plans["fp16"], workdir / "repo", name="subject")
    text = (d / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "max_batch_size: 64" in text
