"""CPU engines (OpenVINO, ONNX Runtime) and the torch reference runtime against PyTorch.

Default run: the three architectures at width 0.25 and 75x75 (cheap); the full networks at
299 are marked ``slow``. The FP32 criterion: max abs error <= 1e-4 of the logit range and
100% top-1 agreement on random inputs.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import engine
from engine.errors import (ArtifactError, BackendUnavailableError, InputError,
                           UnsupportedPrecisionError)
from helpers import cpu_has_bf16

pytest.importorskip("onnx")

ARCHS = ["inception_v4", "inception_resnet_v1", "inception_resnet_v2"]
CPU_BACKENDS = ["openvino", "onnxruntime"]
SMALL = dict(width=0.25, input_size=(3, 75, 75))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """The reference runs single-threaded (see conftest.one_torch_thread)."""


def _installed(name):
    from engine.backends import is_installed
    return is_installed(name)


def _reference(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _inputs(n, size=75, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# Decided on the machine, not by engine.backends.openvino.supports (which is under test):
# OpenVINO is importable, and the CPU flags say BF16 (None: flags unknown outside Linux).
_HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
_CPU_BF16 = cpu_has_bf16()


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    if not _installed(request.param):
        pytest.skip(f"{request.param} not installed")
    return request.param


@pytest.fixture(scope="module")
def _runtimes(exported_onnx):
    opened = {}
    yield opened
    for rt in opened.values():
        rt.close()


@pytest.fixture
def small_rt(exported_onnx, _runtimes, backend):
    """The small IR-v2 on ``backend``, opened once per module (tests must not close it)."""
    if backend not in _runtimes:
        path, _ = exported_onnx("inception_resnet_v2", **SMALL)
        _runtimes[backend] = engine.load(path, backend=backend, threads=1)
    return _runtimes[backend]


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_parity_and_dynamic_batch(exported_onnx, backend, arch):
    """One exported file per architecture, batch 1, 3 and 8 on one compiled model, each
    within 1e-4 of the logit range of PyTorch and with the same top-1."""
    path, model = exported_onnx(arch, **SMALL)
    x = _inputs(8, seed=1)
    ref = _reference(model, x)
    rng = ref.max() - ref.min()
    with engine.load(path, backend=backend, threads=1) as rt:
        assert rt.backend == backend and rt.precision == "fp32"
        assert rt.config is not None and rt.config.name == arch
        assert rt.inputs[0].shape[0] is None  # dynamic batch axis
        outs = {n: rt(x[:n]) for n in (1, 3, 8, 1)}
    for n, out in outs.items():
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert out.shape == (n, ref.shape[1])
        assert np.abs(out - ref[:n]).max() <= 1e-4 * rng, n
        assert (out.argmax(1) == ref[:n].argmax(1)).all(), n


def test_torch_in_torch_out(exported_onnx, small_rt):
    path, model = exported_onnx("inception_resnet_v2", **SMALL)
    x = torch.from_numpy(_inputs(2))
    y = small_rt(x)
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == torch.float32
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(y, ref, atol=1e-4 * float(ref.max() - ref.min()), rtol=0)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 75, 75), np.float32), "3 dims"),
    (np.zeros((1, 3, 64, 64), np.float32), "axis 2"),
    (np.zeros((1, 1, 75, 75), np.float32), "axis 1"),
    (np.zeros((1, 3, 75, 75), np.int64), "dtype int64"),
    ([[0.0]], "numpy array or torch tensor"),
])
def test_bad_input_rejected(small_rt, bad, match):
    with pytest.raises(InputError, match=match):
        small_rt(bad)


@pytest.mark.parametrize("value, what", [(np.nan, "1 NaN"), (np.inf, "1 Inf")])
def test_nan_inf_reported(small_rt, value, what):
    x = _inputs(1)
    x[0, 1, 5, 5] = value
    with pytest.raises(InputError, match=what):
        small_rt(x)
    with pytest.raises(InputError):
        small_rt(torch.from_numpy(x))


def test_closed_runtime_refuses(exported_onnx, backend):
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    rt = engine.load(path, backend=backend)
    with rt:
        rt(_inputs(1))
    with pytest.raises(RuntimeError, match="closed"):
        rt(_inputs(1))


def test_intermediates_by_tensor_name(small_rt):
    names = ["/repeat/repeat.0/relu/Relu_output_0", "/mixed_5b/Concat_output_0"]
    acts = small_rt.intermediates(_inputs(2), names)
    assert set(acts) == set(names)
    assert acts[names[0]].shape[0] == 2 and acts[names[0]].ndim == 4
    with pytest.raises(KeyError, match="not in the model"):
        small_rt.intermediates(_inputs(1), ["/no/such/tensor"])


def test_openvino_properties(exported_onnx):
    if not _installed("openvino"):
        pytest.skip("openvino not installed")
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    with engine.load(path, backend="openvino", threads=2) as rt:
        # FP32 is set explicitly (OpenVINO's own default on AMX CPUs is BF16)
        assert str(rt.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
        assert int(rt.compiled.get_property("INFERENCE_NUM_THREADS")) == 2
        assert "LATENCY" in str(rt.compiled.get_property("PERFORMANCE_HINT"))
    with engine.load(path, backend="openvino", static_batch=3) as rt:
        assert rt.inputs[0].shape == (3, 3, 75, 75)
        assert rt(_inputs(3)).shape[0] == 3
        with pytest.raises(InputError, match="axis 0"):
            rt(_inputs(2))


@pytest.mark.parametrize("caps, hint", [(["FP32", "INT8", "BF16"], "bf16"),
                                        (["FP32", "INT8"], "f32")])
def test_openvino_int8_float_layers_fall_back_to_bf16_where_native(monkeypatch, caps, hint):
    """The float layers of an INT8 file (kept in float by a budget, the classifier) run at the
    target's fallback: bf16 where the CPU has it, else f32; FP32 files stay f32 always."""
    if not _installed("openvino"):
        pytest.skip("openvino not installed")
    from engine.backends import openvino as ov_backend
    monkeypatch.setattr(ov_backend, "capabilities", lambda device="CPU": caps)
    assert ov_backend._precision_hint("int8", "CPU") == hint
    assert ov_backend._precision_hint("fp32", "CPU") == "f32"


def test_onnxruntime_threads(exported_onnx):
    if not _installed("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    with engine.load(path, backend="onnxruntime", threads=2) as rt:
        assert rt._opts.intra_op_num_threads == 2
        assert rt.providers[-1] == "CPUExecutionProvider"
        assert rt.device == "cpu"


@pytest.mark.skipif(not _HAS_OPENVINO or _CPU_BF16 is None, reason="needs openvino and readable CPU flags")
def test_openvino_offers_bf16_exactly_where_the_cpu_has_it():
    from engine.backends.openvino import supports
    assert supports("bf16") == _CPU_BF16


@pytest.mark.skipif(not (_HAS_OPENVINO and _CPU_BF16),
                    reason="needs openvino and a CPU with BF16 (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo)")
@pytest.mark.parametrize("arch", ARCHS)
def test_openvino_bf16_agreement(exported_onnx, arch):
    """BF16 tolerance (documented in engine.verify): judged on agreement; random weights give
    near-tied logits, so here on cosine >= 0.99 and top-5 overlap only."""
    path, model = exported_onnx(arch, **SMALL)
    with engine.load(path, backend="openvino", precision="bf16") as rt:
        assert rt.precision == "bf16"
        r = engine.verify(rt, model, _inputs(8), tolerance={"top1": None, "top5": 0.6},
                          localize=False)
    assert r.passed, str(r)


@pytest.mark.skipif(not _HAS_OPENVINO or _CPU_BF16 is not False,
                    reason="needs openvino and a CPU without BF16 (per /proc/cpuinfo)")
def test_openvino_bf16_unsupported_is_clear(exported_onnx):
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    with pytest.raises(BackendUnavailableError, match="OPTIMIZATION_CAPABILITIES"):
        engine.load(path, backend="openvino", precision="bf16")


def test_precision_checks(exported_onnx, backend):
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    with pytest.raises(UnsupportedPrecisionError, match="Q/DQ") as e:
        engine.load(path, backend=backend, precision="int8")
    assert isinstance(e.value, ArtifactError) and isinstance(e.value, ValueError)
    with pytest.raises(UnsupportedPrecisionError, match="unknown precision") as e:
        engine.load(path, backend=backend, precision="fp8")
    assert isinstance(e.value, ValueError)


def _qdq_file(path):
    """A tiny Q/DQ conv graph with our int8 metadata (what calibration writes, in small)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from engine.onnxmeta import META_PRECISION, set_metadata
    w = np.random.default_rng(0).integers(-20, 20, (4, 3, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(w, "wq"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"], name="/q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="/dq"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="/wdq", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["logits"], name="/relu/Relu")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(m, {META_PRECISION: "int8"})
    onnx.save(m, str(path))
    return path


def test_int8_qdq_file_runs_as_int8(tmp_path, backend):
    import warnings
    path = _qdq_file(tmp_path / "tiny.int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with engine.load(path, backend=backend) as rt:
            assert rt.precision == "int8"
            y = rt(np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32))
        assert y.shape == (2, 4, 8, 8) and np.isfinite(y).all()
        with pytest.raises(UnsupportedPrecisionError, match="INT8") as e:
            engine.load(path, backend=backend, precision="fp32")
        assert isinstance(e.value, ArtifactError)


def test_torch_runtime_reference(exported_onnx, tmp_path):
    from engine.backends.torch import TorchRuntime
    _, model = exported_onnx("inception_resnet_v2", **SMALL)
    x = _inputs(2)
    with TorchRuntime(model) as rt:
        assert rt.backend == "torch" and rt.precision == "fp32"
        np.testing.assert_array_equal(rt(x), _reference(model, x))
        acts = rt.intermediates(x, ["repeat.0", "mixed_5b"])
        assert acts["repeat.0"].shape[0] == 2
    torch.manual_seed(3)
    small = engine.create_model("inception_resnet_v2_fmnist")
    ckpt = tmp_path / "w.pth"
    torch.save(small.state_dict(), ckpt)
    with engine.load(ckpt, backend="torch", model="inception_resnet_v2_fmnist") as rt2:
        assert rt2.config.name == "inception_resnet_v2_fmnist"
        np.testing.assert_array_equal(rt2(x), _reference(small, x))
    with pytest.raises(InputError, match="needs its variant"):
        TorchRuntime(ckpt)
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        TorchRuntime(model, precision="fp16")
    with pytest.raises(UnsupportedPrecisionError, match="runs fp32, bf16 or fp16"):
        TorchRuntime(model, precision="int8")


def test_torch_runtime_keeps_the_runtime_contract(exported_onnx):
    """Validation is the base class's (same errors as every engine); a torch tensor comes
    back as a torch tensor on its device, a numpy array as a numpy array."""
    from engine.backends.torch import TorchRuntime
    _, model = exported_onnx("inception_resnet_v2", **SMALL)
    x = _inputs(2)
    with TorchRuntime(model) as rt:
        y = rt(torch.from_numpy(x))
        assert isinstance(y, torch.Tensor) and y.device.type == "cpu"
        np.testing.assert_array_equal(y.numpy(), rt(x))
        bad = x.copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(InputError, match="1 NaN"):
            rt(torch.from_numpy(bad))
        with pytest.raises(InputError, match="3 dims"):
            rt(x[0])


@pytest.mark.parametrize("module, cls", [("torch", "TorchRuntime"),
                                         ("onnxruntime", "ONNXRuntimeRuntime"),
                                         ("openvino", "OpenVINORuntime")])
def test_no_backend_overrides_call(module, cls):
    import importlib
    if not _installed(module):
        pytest.skip(f"{module} not installed")
    runtime = getattr(importlib.import_module(f"engine.backends.{module}"), cls)
    assert "__call__" not in vars(runtime) and "validate" not in vars(runtime)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_full_size_299(exported_onnx, backend, arch):
    path, model = exported_onnx(arch)
    x = _inputs(2, size=299)
    ref = _reference(model, x)
    with engine.load(path, backend=backend) as rt:
        out = rt(x)
    assert np.abs(out - ref).max() <= 1e-4 * (ref.max() - ref.min())
    assert (out.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("module, cls", [("torch", "TorchRuntime"),
                                         ("onnxruntime", "ONNXRuntimeRuntime"),
                                         ("openvino", "OpenVINORuntime")])
@pytest.mark.parametrize("threads", [0, -1, 2.5, "2", True])
def test_bad_thread_count_names_the_option(exported_onnx, module, cls, threads):
    import importlib
    if not _installed(module):
        pytest.skip(f"{module} not installed")
    path, model = exported_onnx("inception_resnet_v2", **SMALL)
    runtime = getattr(importlib.import_module(f"engine.backends.{module}"), cls)
    with pytest.raises(InputError, match=r"threads must be an integer >= 1 \(or None"):
        runtime(model if module == "torch" else path, threads=threads)


@pytest.mark.parametrize("option", ["num_streams", "static_batch"])
def test_openvino_counts_are_checked(exported_onnx, option):
    if not _installed("openvino"):
        pytest.skip("openvino not installed")
    from engine.backends.openvino import OpenVINORuntime
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    with pytest.raises(InputError, match=f"{option} must be an integer >= 1.*got 0"):
        OpenVINORuntime(path, **{option: 0})
    with pytest.raises(InputError, match="hint must be one of latency, throughput"):
        OpenVINORuntime(path, hint="fast")


def test_onnxruntime_unknown_optimization_lists_the_levels(exported_onnx):
    if not _installed("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    with pytest.raises(InputError, match="optimization must be one of all, extended, basic, "
                                         "none .*got 'max'"):
        engine.load(path, backend="onnxruntime", optimization="max")
    with pytest.raises(InputError, match="device must be 'auto', 'cuda' or 'cpu'"):
        engine.load(path, backend="onnxruntime", device="gpu")


def _relu_graph(out_name=b"out"):
    """A one-Relu ONNX model, serialized, with its output tensor called ``out_name``."""
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["out"], name="/relu")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["batch", 3, 4, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                         ["batch", 3, 4, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m.SerializeToString().replace(b"out", out_name)


def test_openvino_undecodable_names_are_an_artifact_error(tmp_path):
    """OpenVINO reads the file, then Python cannot decode a tensor name (UnicodeDecodeError
    inside the binding): the user gets the file and what to do."""
    if not _installed("openvino"):
        pytest.skip("openvino not installed")
    from engine.backends.openvino import OpenVINORuntime
    path = tmp_path / "names.onnx"
    path.write_bytes(_relu_graph(b"\xff\xfet"))
    with pytest.raises(ArtifactError, match=r"names\.onnx: a tensor or node name .* not valid "
                                            r"UTF-8.*re-export"):
        OpenVINORuntime(path)


def test_openvino_external_data_outside_the_folder(tmp_path):
    """OpenVINO refuses external data outside the model's folder; the message names the data
    file and the folder to move it to, not OpenVINO's source-location dump."""
    if not _installed("openvino"):
        pytest.skip("openvino not installed")
    from onnx import TensorProto, helper, numpy_helper
    from engine.backends.openvino import OpenVINORuntime
    folder = tmp_path / "model"
    folder.mkdir()
    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "W")
    (tmp_path / "weights.bin").write_bytes(weight.raw_data)
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in [("location", "../weights.bin"), ("offset", "0"), ("length", "48")]:
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    g = helper.make_graph([helper.make_node("Conv", ["input", "W"], ["out"], name="/conv")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["batch", 3, 4, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                         ["batch", 4, 4, 4])], [weight])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ArtifactError) as e:
        OpenVINORuntime(path)
    msg = str(e.value)
    assert str(path) in msg and "weights.bin" in msg
    assert f"move weights.bin into {folder}" in msg
    assert "Exception from src" not in msg


def test_openvino_unreadable_file_is_an_artifact_error(tmp_path):
    if not _installed("openvino"):
        pytest.skip("openvino not installed")
    from engine.backends.openvino import OpenVINORuntime
    path = tmp_path / "noise.xml"
    path.write_bytes(bytes(range(256)) * 3)
    with pytest.raises(ArtifactError, match=r"noise\.xml: OpenVINO cannot read the model .*"
                                            r"re-export it") as e:
        OpenVINORuntime(path)
    assert "Exception from src" not in str(e.value)


def test_a_failure_inside_the_engine_is_a_clear_error(tmp_path, backend):
    """A graph that passes the load-time checks but cannot run (a Reshape whose target does not
    divide the input) fails with UnsupportedGraphError naming the engine and the file, not
    with the engine's raw exception."""
    import warnings
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from engine.errors import UnsupportedGraphError
    target = numpy_helper.from_array(np.array([-1, 7], np.int64), "target")
    g = helper.make_graph(
        [helper.make_node("Reshape", ["input", "target"], ["logits"], name="/r/Reshape")], "r",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 7])], [target])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with engine.load(path, backend=backend) as rt:
            with pytest.raises(UnsupportedGraphError, match=rf"{backend} failed running .*reshape"
                                                           r"\.onnx.*another backend"):
                rt(np.zeros((1, 3, 4, 4), np.float32))
