"""Bias correction (calibration/bias.py): the quantized file's mean output matches FP32's.

The rule is checked on the file itself, run by ONNX Runtime (not by the code that computed the
shifts): a conv whose input range is clipped hard has a mean output well below FP32's; with
bias correction, its per-channel mean over the calibration images equals FP32's.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import calibration  # noqa: E402
from calibration.bias import apply_bias_shifts  # noqa: E402
from engine.errors import InputError  # noqa: E402

CLIP = 1.0   # the activation range given: the inputs (exponential, mean 1) reach ~8


def relu_conv_model(bias=True):
    """X -> Relu -> Conv(3->4, 3x3, pad 1, stride 2) -> Y; the Relu output is >= 0, so target
    openvino quantizes it uint8 and tensorrt int8."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "conv.weight")]
    conv_inputs = ["relu_out", "conv.weight"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32),
                                             "conv.bias"))
        conv_inputs.append("conv.bias")
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["relu_out"], name="relu"),
         helper.make_node("Conv", conv_inputs, ["y"], name="conv", pads=[1, 1, 1, 1],
                          strides=[2, 2], kernel_shape=[3, 3])],
        "relu_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def images(n=64):
    return np.random.default_rng(1).exponential(1.0, (n, 3, 8, 8)).astype(np.float32)


def channel_means(model_or_path, x):
    data = model_or_path if isinstance(model_or_path, (str, bytes)) else \
        model_or_path.SerializeToString()
    sess = ort.InferenceSession(str(data) if isinstance(data, str) else data,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0].mean(axis=(0, 2, 3))


def quantized(tmp_path, target, corrected, bias=True):
    model = relu_conv_model(bias)
    src = tmp_path / f"fp32_{int(bias)}.onnx"
    onnx.save(model, str(src))
    out = tmp_path / f"{target}.{int(corrected)}.{int(bias)}.onnx"
    calibration.quantize(src, out, data=images(), scales={"relu_out": CLIP}, target=target,
                         bias_correction=corrected, bias_images=64)
    return src, out


@pytest.mark.parametrize("target", [pytest.param("tensorrt", id="signed-int8"),
                                    pytest.param("openvino", id="uint8-after-relu")])
def test_corrected_file_has_the_float_mean(tmp_path, target):
    x = images()
    src, plain = quantized(tmp_path, target, False)
    _, fixed = quantized(tmp_path, target, True)
    want = channel_means(str(src), x)
    shift_before = np.abs(channel_means(str(plain), x) - want).max()
    shift_after = np.abs(channel_means(str(fixed), x) - want).max()
    assert shift_before > 0.5          # clipping at 1.0 of inputs reaching ~8: a large shift
    # exact up to float32 summation (~1e-6): the file's own layout was modelled; modelling
    # the uint8 input as int8 leaves ~2e-4 here
    assert shift_after < 2e-5


def test_record_and_conv_without_bias(tmp_path):
    src, fixed = quantized(tmp_path, "tensorrt", True, bias=False)
    m = onnx.load(str(fixed))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3 and conv.input[2]          # a bias was added
    record = json.loads({p.key: p.value for p in m.metadata_props}["inception.calibration"])
    assert record["bias_correction"]["convs"] == 1
    assert record["bias_correction"]["images"] == 64
    x = images()
    assert np.abs(channel_means(str(fixed), x) - channel_means(str(src), x)).max() < 1e-3
    _, plain = quantized(tmp_path, "tensorrt", False, bias=False)
    record = json.loads({p.key: p.value for p in onnx.load(str(plain)).metadata_props}
                        ["inception.calibration"])
    assert record["bias_correction"] is None


def test_shared_bias_is_copied_not_changed_for_both():
    """Two convs reading one bias initializer: correcting one leaves the other's bias alone."""
    from onnx import helper, numpy_helper
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y1"], name="c1"),
         helper.make_node("Conv", ["x", "w", "b"], ["y2"], name="c2")],
        "shared", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 2, 2])
         for n in ("y1", "y2")], [w, b])
    m = helper.make_model(g)
    assert apply_bias_shifts(m, {"c1": np.array([0.5, -0.5], np.float32)}) == 1
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    c1, c2 = m.graph.node
    assert c2.input[2] == "b" and inits["b"].tolist() == [1.0, 2.0]
    assert c1.input[2] != "b" and inits[c1.input[2]].tolist() == [1.5, 1.5]


def test_bad_requests_are_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(relu_conv_model(), str(src))
    with pytest.raises(calibration.CalibrationError, match="bias_correction needs calibration"):
        calibration.quantize(src, tmp_path / "o.onnx", scales={"relu_out": CLIP},
                             bias_correction=True)
    with pytest.raises(calibration.CalibrationError, match="one-shot iterator"):
        calibration.quantize(src, tmp_path / "o.onnx", data=iter([images(8)]),
                             bias_correction=True)
    with pytest.raises(InputError, match="bias_images"):
        calibration.quantize(src, tmp_path / "o.onnx", data=images(8), bias_correction=True,
                             bias_images=0)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("method, expected", [("entropy", True), ("minmax", False)])
def test_default_follows_the_targets_table(tmp_path, method, expected):
    """bias_correction=None: on where ``calibration.targets`` says it helped, given data that
    can be read again; a one-shot iterator turns it off rather than failing."""
    from calibration.targets import TARGETS, wants_bias_correction
    assert wants_bias_correction(TARGETS["tensorrt"], method) is expected
    src = tmp_path / "m.onnx"
    onnx.save(relu_conv_model(), str(src))
    res = calibration.quantize(src, tmp_path / "a.onnx", data=images(), method=method,
                               target="tensorrt")
    assert (res.bias_correction is not None) is expected
    if expected:
        assert res.bias_correction["chosen"].startswith("auto")
    once = calibration.quantize(src, tmp_path / "b.onnx", data=iter([images()]),
                                method=method, target="tensorrt")
    assert once.bias_correction is None
