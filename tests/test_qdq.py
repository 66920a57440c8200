"""The Q/DQ ONNX writer on the study subject (IR-v2, width 0.25, 75x75): graph rules, engines,
bad inputs, atomic output, TensorRT cache and sensitivity.

Uses the bundled Fashion-MNIST checkpoint and the shipped calibration split, so the agreement
check means something.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import calibration
from calibration import AlreadyQuantizedError, CalibrationDataError, CalibrationError

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
from helpers import openvino_int8_saturates

NUM_CALIB = 64


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    import engine
    model = engine.create_model("inception_resnet_v2_fmnist", weights="bundled")
    d = tmp_path_factory.mktemp("qdq")
    path = engine.export_onnx(model, d / "subject.onnx")
    return path, model.config


@pytest.fixture(scope="module")
def images(subject):
    from engine.datasets import fashion_mnist, to_model_input
    _, cfg = subject
    calib, _ = fashion_mnist("calib", limit=NUM_CALIB)
    test, labels = fashion_mnist("test", limit=64)
    return (to_model_input(calib.copy(), cfg).numpy(), to_model_input(test.copy(), cfg).numpy(),
            labels)


@pytest.fixture(scope="module")
def stats(subject, images):
    return calibration.collect_statistics(subject[0], images[0], threads=2)


@pytest.fixture(scope="module")
def quantized(subject, stats, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "subject.int8.onnx"
    res = calibration.quantize(subject[0], out, statistics=stats, method="percentile",
                               cache=out.with_suffix(".cache"))
    return res, onnx.load(str(out))


# --------------------------------------------------------------------------- graph helpers
def _index(proto):
    g = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    return inits, producer


def _dq_scale(t, inits, producer):
    """Scale of the DequantizeLinear producing ``t`` (None if ``t`` is not dequantized)."""
    n = producer.get(t)
    if n is None or n.op_type != "DequantizeLinear":
        return None
    return inits[n.input[1]]


# --------------------------------------------------------------------------- graph rules
def test_checker_and_metadata(quantized):
    res, proto = quantized
    onnx.checker.check_model(proto, full_check=True)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["inception.precision"] == "int8"
    meta = json.loads(props["inception.calibration"])
    assert meta["method"] == "percentile" and meta["percentile"] == 99.99
    assert meta["num_images"] == NUM_CALIB
    assert "inception.config" in props and "inception.weights_sha256" in props


def test_zero_points_all_zero_int8(quantized):
    _, proto = quantized
    inits, _ = _index(proto)
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name


def test_every_conv_reads_int8_weights_per_channel(quantized):
    _, proto = quantized
    inits, producer = _index(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 244
    for c in convs:
        assert producer[c.input[0]].op_type == "DequantizeLinear", c.name
        wdq = producer[c.input[1]]
        assert wdq.op_type == "DequantizeLinear", c.name
        w, scale = inits[wdq.input[0]], inits[wdq.input[1]]
        axis = next(a.i for a in wdq.attribute if a.name == "axis")
        assert w.dtype == np.int8 and axis == 0 and scale.shape == (w.shape[0],), c.name
        assert np.abs(w).max() <= 127


def test_no_qdq_on_conv_outputs_and_residual_shortcut_only(quantized):
    _, proto = quantized
    inits, producer = _index(proto)
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            src = producer.get(n.input[0])
            assert src is None or src.op_type != "Conv", f"{n.name} quantizes a conv output"
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 40
    for a in adds:
        kinds = sorted(producer[t].op_type for t in a.input)
        assert kinds == ["Conv", "DequantizeLinear"], (a.name, kinds)


def test_concat_inputs_and_output_share_one_scale(quantized):
    _, proto = quantized
    inits, producer = _index(proto)
    readers = {}
    for n in proto.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    concats = [n for n in proto.graph.node if n.op_type == "Concat"]
    assert len(concats) == 43
    for c in concats:
        scales = [_dq_scale(t, inits, producer) for t in c.input]
        assert all(s is not None for s in scales), c.name
        outq = [r for r in readers[c.output[0]] if r.op_type == "QuantizeLinear"]
        assert len(outq) == 1, c.name
        scales.append(inits[outq[0].input[1]])
        assert len({float(s) for s in scales}) == 1, (c.name, scales)
    for mp in (n for n in proto.graph.node if n.op_type == "MaxPool"):
        s_in = _dq_scale(mp.input[0], inits, producer)
        outq = [r for r in readers[mp.output[0]] if r.op_type == "QuantizeLinear"]
        assert s_in is not None and float(s_in) == float(inits[outq[0].input[1]]), mp.name


def test_gemm_stays_float_by_default(quantized):
    _, proto = quantized
    _, producer = _index(proto)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    assert all(producer.get(t) is None or producer[t].op_type != "DequantizeLinear"
               for t in gemm.input)


def test_exclude_keeps_layers_float(subject, stats, tmp_path):
    out = tmp_path / "mixed.onnx"
    calibration.quantize(subject[0], out, statistics=stats, method="minmax",
                         exclude=["repeat.0", "/conv2d_1a/conv/Conv"])
    proto = onnx.load(str(out))
    _, producer = _index(proto)
    excluded = [n for n in proto.graph.node if n.op_type == "Conv" and
                (n.name.startswith("/repeat/repeat.0/") or n.name == "/conv2d_1a/conv/Conv")]
    assert len(excluded) == 8          # block35: 7 convs, plus the stem conv
    for c in excluded:
        for t in c.input:
            assert t not in producer or producer[t].op_type not in (
                "DequantizeLinear", "QuantizeLinear"), (c.name, t)
    # mixed_5b feeds the excluded block: it stays float, quantized at its output only
    cat = next(n for n in proto.graph.node if n.name == "/mixed_5b/Concat")
    assert all(producer[t].op_type == "Relu" for t in cat.input)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["inception.calibration"])
    assert meta["exclude"] == ["repeat.0", "/conv2d_1a/conv/Conv"]


# --------------------------------------------------------------------------- engines
def _agreement(fp32_path, int8_path, x):
    import onnxruntime as ort
    import openvino as ov
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    ref = ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    y_ort = ort.InferenceSession(str(int8_path), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    comp = ov.Core().compile_model(str(int8_path), "CPU", {"INFERENCE_NUM_THREADS": 2,
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    y_ov = comp(x)[0]
    out = {}
    for name, y in (("onnxruntime", y_ort), ("openvino", y_ov)):
        out[name] = ((y.argmax(1) == ref.argmax(1)).mean() * 100,
                     float(((y - ref) ** 2).sum() / (ref ** 2).sum()))
    return out


@pytest.mark.parametrize("engine_name", [
    "onnxruntime", pytest.param("openvino", marks=openvino_int8_saturates)])
def test_runs_on_openvino_and_onnxruntime(subject, quantized, images, engine_name):
    res, _ = quantized
    agree, rel_err = _agreement(subject[0], res.path, images[1])[engine_name]
    assert rel_err < 0.05, (engine_name, rel_err)
    assert agree >= 90.0, (engine_name, agree)


# --------------------------------------------------------------------------- cache
def test_cache_written_and_reused(subject, quantized, tmp_path):
    res, proto = quantized
    cache = calibration.read_cache(res.cache)
    assert set(cache.scales) == set(res.plan.tensors)
    inits, _ = _index(proto)
    for t in res.plan.tensors:
        assert cache.scales[t] == pytest.approx(float(inits[f"{t}_scale"]), rel=1e-7)
    out = tmp_path / "from_cache.onnx"
    calibration.quantize(subject[0], out, scales=res.cache)
    again, _ = _index(onnx.load(str(out)))
    for t in res.plan.tensors:
        assert float(again[f"{t}_scale"]) == pytest.approx(float(inits[f"{t}_scale"]), rel=1e-6)


# --------------------------------------------------------------------------- bad input
def test_rejects_already_quantized(quantized, tmp_path, images):
    res, _ = quantized
    with pytest.raises(AlreadyQuantizedError, match="already quantized"):
        calibration.quantize(res.path, tmp_path / "twice.onnx", data=images[0])
    assert not (tmp_path / "twice.onnx").exists()


def test_unknown_exclude_lists_close_matches(subject, stats, tmp_path):
    with pytest.raises(CalibrationError, match=r"no layer named 'conv2d_1x'.*conv2d_1a"):
        calibration.quantize(subject[0], tmp_path / "x.onnx", statistics=stats,
                             exclude=["conv2d_1x"])


def test_bad_data_and_failed_run_leave_no_output(subject, images, tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(CalibrationDataError, match="empty"):
        calibration.quantize(subject[0], out, data=[])
    with pytest.raises(CalibrationDataError, match="28x28"):
        calibration.quantize(subject[0], out, data=np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(CalibrationDataError, match="1 channels"):
        calibration.quantize(subject[0], out, data=np.zeros((2, 1, 75, 75), np.float32))

    def breaks_midway():              # a good batch, then a bad one
        yield images[0][:4]
        yield np.zeros((4, 3, 32, 32), np.float32)
    with pytest.raises(CalibrationDataError):
        calibration.quantize(subject[0], out, data=breaks_midway())
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"previous")      # an existing file survives a failed run untouched
    with pytest.raises(CalibrationDataError):
        calibration.quantize(subject[0], out, data=breaks_midway())
    assert out.read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1


# --------------------------------------------------------------------------- sensitivity, CLI
def test_sensitivity_ranks_layers(subject, stats, images):
    plan = calibration.plan_quantization(calibration.load_fp32(subject[0]))
    amax = plan.group_amax(stats.amax("entropy", names=plan.tensors))
    layers = ["conv2d_1a", "repeat.0.branch0", "conv2d_7b"]
    ranking = calibration.sensitivity(subject[0], images[0], amax=amax, plan=plan,
                                      layers=layers, num_images=8)
    assert len(ranking) == 3
    assert [r.error for r in ranking] == sorted((r.error for r in ranking), reverse=True)
    assert all(r.error >= 0 and 0 <= r.agreement <= 100 for r in ranking)


def test_cli_quantize(subject, images, tmp_path, capsys):
    from engine.cli import ERROR_STATUS, main
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=images[0][:16])
    out = tmp_path / "cli.int8.onnx"
    rc = main(["quantize", str(subject[0]), str(out), "--method", "percentile", "--calib",
               str(calib), "--num", "8", "--exclude", "conv2d_1a", "--cache",
               str(tmp_path / "cli.cache"), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == 8 and summary["method"] == "percentile"
    assert out.exists() and (tmp_path / "cli.cache").exists()
    rc = main(["quantize", str(out), str(tmp_path / "again.onnx"), "--calib", str(calib)])
    assert rc == ERROR_STATUS and "already quantized" in capsys.readouterr().err


def test_crash_while_writing_leaves_no_partial_file(subject, stats, tmp_path, monkeypatch):
    def half_write(proto, path, *a, **kw):
        with open(path, "wb") as f:
            f.write(b"\x08\x07partial")
        raise OSError("disk full")
    monkeypatch.setattr(onnx, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        calibration.quantize(subject[0], tmp_path / "out.onnx", statistics=stats,
                             method="minmax", cache=tmp_path / "out.cache")
    assert list(tmp_path.iterdir()) == []


def test_unsigned_relu_variant(subject, stats, images, tmp_path):
    out = tmp_path / "u8.onnx"
    res = calibration.quantize(subject[0], out, statistics=stats, method="minmax",
                               target="openvino")
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    inits, producer = _index(proto)
    kinds = set()
    for n in proto.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        zp = inits[n.input[2]]
        assert not zp.any()
        kinds.add(zp.dtype)
        t = n.input[0]
        want = res.amax[t] / (255 if t in res.plan.nonnegative else 127)
        assert zp.dtype == (np.uint8 if t in res.plan.nonnegative else np.int8)
        assert float(inits[n.input[1]]) == pytest.approx(want, rel=1e-6)
    assert kinds == {np.dtype(np.uint8), np.dtype(np.int8)}    # the image input stays signed
    assert "input" not in res.plan.nonnegative
    for engine_name, (agree, rel_err) in _agreement(subject[0], out, images[1]).items():
        assert rel_err < 0.05, (engine_name, rel_err)
        assert agree >= 90.0, (engine_name, agree)
